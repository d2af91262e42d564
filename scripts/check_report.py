r"""Open report.html in headless Chromium, offline, and fail on anything a reader would see
go wrong: a page that does not load, a console error or uncaught exception, an image that
does not decode, a request for anything outside the file (the report must be
self-contained), or a chart whose text is wrong: a tick label that shows code
(``$\mathdefault{10^{0}}$``) or tick labels that overlap.

    python scripts/check_report.py runs/compare-fashion-mnist/report.html
    python scripts/check_report.py report.html --screenshot report.png

How: a copy of the report gets, first thing in <head>, a Content-Security-Policy that
allows only inline styles, data: images and the one inline checking script; that script
records console errors, uncaught errors and policy violations, and on `load` checks every
image's decoded size. Chromium's --dump-dom prints the page after `load`, with the
script's findings in a <meta> tag, which this script reads back. The charts' text is read
from the text layout each PNG carries (a text chunk written by actlab.report.figure_png
from the same draw as the pixels: every string drawn, its box, and which axis a tick label
labels); a chart without one cannot be checked and is reported. Exit 0 when clean, 1
with one line per problem, 2 when Chromium is missing.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
RESULT_ID = "actlab-browser-check"

# Injected first in <head>: it must see every error of the page.
CHECKER = """
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<script>
(function () {
  var problems = [];
  var record = function (text) { problems.push(String(text)); };
  var originalError = console.error;
  console.error = function () {
    record("console.error: " + Array.prototype.join.call(arguments, " "));
    originalError.apply(console, arguments);
  };
  window.addEventListener("error", function (event) {
    var target = event.target || {};
    record(target.tagName ? "failed to load <" + target.tagName.toLowerCase() + ">"
                          : "uncaught error: " + event.message);
  }, true);
  document.addEventListener("securitypolicyviolation", function (event) {
    record("blocked request outside the file: " + event.blockedURI + " (" + event.violatedDirective + ")");
  });
  window.addEventListener("load", function () {
    var images = document.images;
    for (var i = 0; i < images.length; i++) {
      if (!images[i].complete || images[i].naturalWidth === 0) {
        record("image " + (i + 1) + " (" + (images[i].alt || "no alt") + ") did not decode");
      }
    }
    var result = document.createElement("meta");
    result.id = "%(result_id)s";
    result.setAttribute("content", JSON.stringify({
      problems: problems, images: images.length, title: document.title,
      headings: document.querySelectorAll("h2").length,
      tables: document.querySelectorAll("table").length,
      width: document.documentElement.scrollWidth
    }));
    document.head.appendChild(result);
  });
})();
</script>
""".replace("%(result_id)s", RESULT_ID)


TEXT_LAYOUT_KEY = "actlab:text-layout"  # actlab.report.figure_png.TEXT_LAYOUT_KEY
FIGURE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"')
# Text that is mathtext source, not its rendering: \mathdefault, \times, ^{...}, or a
# tick label in $...$ (tick labels are numbers and names, never meant to hold '$').
CODE = re.compile(r"\\[A-Za-z]+|\^\{|_\{")
# Tick labels closer than this read as one ("0.0001780.000316"): counted as overlapping.
MIN_GAP_PX = 2.0


def png_text_chunks(data: bytes) -> dict[str, str]:
    """The tEXt, zTXt and iTXt chunks of a PNG, key -> text (empty if not a PNG)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return {}
    chunks, offset = {}, 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        try:
            if kind == b"tEXt":
                key, _, text = body.partition(b"\0")
                chunks[key.decode("latin-1")] = text.decode("latin-1")
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                chunks[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _language, _, rest = rest.partition(b"\0")
                _translated, _, text = rest.partition(b"\0")
                text = zlib.decompress(text) if compressed else text
                chunks[key.decode("latin-1")] = text.decode("utf-8")
        except (zlib.error, UnicodeDecodeError, IndexError):
            continue
        if kind == b"IEND":
            break
    return chunks


def _overlap(a: list[float], b: list[float]) -> bool:
    """Whether two boxes [x0, y0, x1, y1] intersect or are less than MIN_GAP_PX apart."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width > -MIN_GAP_PX and height > -MIN_GAP_PX


def layout_problems(layout: dict) -> list[str]:
    """What is wrong with one chart's text: tick labels that show mathtext source, any text
    that shows \\mathdefault, and tick labels of one axis whose boxes overlap."""
    problems = []
    texts = [t for t in layout.get("texts", []) if isinstance(t, dict) and t.get("text")]
    for item in texts:
        text, tick = str(item["text"]), item.get("tick")
        if item.get("math"):
            continue  # rendered as mathematics, not shown as code
        if "mathdefault" in text or (tick and ("$" in text or CODE.search(text))):
            where = f"{tick} tick label" if tick else "text"
            problems.append(f"{where} shows code: {text!r}")
    groups: dict[tuple, list[dict]] = {}
    for item in texts:
        if item.get("tick") and item.get("box"):
            groups.setdefault((item.get("axes"), item["tick"]), []).append(item)
    for (_, axis), labels in groups.items():
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                if _overlap(a["box"], b["box"]):
                    problems.append(f"{axis} tick labels {a['text']!r} and {b['text']!r} overlap")
    return problems


def figure_problems(report: str) -> list[str]:
    """Problems of the charts embedded in the report's HTML, one line each, naming the
    chart by its number and alt text."""
    problems = []
    for number, (data, alt) in enumerate(FIGURE.findall(report), start=1):
        name = f"chart {number} ({html.unescape(alt)[:60]})"
        try:
            chunks = png_text_chunks(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            chunks = {}
        try:
            layout = json.loads(chunks[TEXT_LAYOUT_KEY])
        except (KeyError, ValueError):
            problems.append(
                f"{name}: its PNG carries no text layout ({TEXT_LAYOUT_KEY}), so its labels "
                "cannot be checked; re-render the report with this actlab (actlab report RUN)"
            )
            continue
        problems += [f"{name}: {problem}" for problem in layout_problems(layout)]
    return problems


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def instrumented(report: str) -> str:
    """The report with the checker as the first thing in <head>."""
    match = re.search(r"<head[^>]*>", report, flags=re.IGNORECASE)
    if match is None:
        raise ValueError("no <head> element: not an HTML report")
    return report[: match.end()] + CHECKER + report[match.end() :]


def chromium_command(chromium: str, profile: str, *extra: str) -> list[str]:
    return [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-sync", "--metrics-recording-only", "--mute-audio",
        f"--user-data-dir={profile}", *extra,
    ]  # fmt: skip


def check_report(
    path: str | Path,
    *,
    screenshot: str | Path | None = None,
    height: int = 2400,
    timeout: float = 120.0,
) -> tuple[list[str], dict]:
    """Problems found (empty when clean) and the page's facts (images, headings, ...)."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium found (apt-get install chromium)")
    report = Path(path).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="actlab-check-") as folder:
        page = Path(folder) / "report.html"
        page.write_text(instrumented(report), encoding="utf-8")
        profile = os.path.join(folder, "profile")
        command = chromium_command(chromium, profile, "--dump-dom", page.as_uri())
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [f"chromium did not finish loading the page in {timeout:.0f} s"], {}
        if screenshot is not None:
            target = Path(screenshot).resolve()
            shot = chromium_command(chromium, profile + "-shot", "--hide-scrollbars",
                                    f"--window-size=1280,{height}", f"--screenshot={target}",
                                    Path(path).resolve().as_uri())  # fmt: skip
            subprocess.run(shot, capture_output=True, text=True, timeout=timeout)
    match = re.search(rf'<meta id="{RESULT_ID}" content="([^"]*)"', done.stdout) or re.search(
        rf'<meta content="([^"]*)" id="{RESULT_ID}"', done.stdout
    )
    if done.returncode != 0 or match is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"the page did not load (chromium exit {done.returncode}: {tail})"], {}
    facts = json.loads(html.unescape(match.group(1)))
    problems = list(facts.pop("problems"))
    # Chromium logs console errors of the page to stderr as well, e.g. CSP reports.
    for line in done.stderr.splitlines():
        if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line):
            problems.append(f"console: {line.strip()}")
    if not facts.get("title"):
        problems.append("the page has no title")
    problems += figure_problems(report)
    return problems, facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="report.html to check")
    parser.add_argument("--screenshot", default=None, help="also write a PNG of the page")
    parser.add_argument("--height", type=int, default=2400, help="screenshot height in px")
    args = parser.parse_args(argv)
    try:
        problems, facts = check_report(args.report, screenshot=args.screenshot, height=args.height)
    except FileNotFoundError as error:
        print(f"check_report: {error}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError, ValueError) as error:
        print(f"check_report: {args.report}: the page did not load ({error})", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"check_report: {args.report}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(
        f"{args.report}: loaded offline in Chromium; {facts['images']} images decoded, "
        f"{facts['headings']} sections, {facts['tables']} tables, no console error"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
