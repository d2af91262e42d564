"""Errors a user can cause and fix.

Every such error is one line that names the bad input and the way out. The CLI prints
``actlab: error: <message>`` for these and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class ActlabError(Exception):
    """A mistake in user input (a name, a file, an option). The message is one line."""


class UnknownActivationError(ActlabError, ValueError):
    """An activation name that is not in the catalog (the message lists the nearest names)."""


class SpecError(ActlabError, ValueError):
    """A malformed activation spec: bad parameter, bad expression, missing `dim`."""


class DataError(ActlabError):
    """A dataset that cannot be found, downloaded or read (the message names the file)."""


class RunDirError(ActlabError):
    """A run directory that is missing, locked, corrupt, or does not match the config."""


class ConfigError(ActlabError, ValueError):
    """An experiment configuration that cannot run as asked (the message says why)."""


class ExportError(ActlabError):
    """An export (TensorBoard, MLflow) that cannot be done: a missing package, a target
    that holds another study, a tracking store that refuses the export."""


def control_characters(text: str) -> list[str]:
    """The control and format characters in `text` (Unicode categories Cc, Cf, Zl, Zp:
    newlines, form feeds, record separators, bidi overrides ...), as escapes like '\\n'.
    Names and specs travel through CSV rows, terminal lines, plot labels and reports, where
    such characters split rows or hide text, so they are refused where they enter."""
    import unicodedata

    found = {
        repr(char)[1:-1]
        for char in text
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") and char != " "
    }
    return sorted(found)


class ClusterError(ActlabError):
    """A Ray cluster that cannot run the study (unreachable, workers lost beyond retries);
    the message says how to go on (rerunning resumes from the last checkpoint)."""


class ModelNotice(UserWarning):
    """Something the user should know about how their model trains (members trained one by
    one, activations a swap left alone or did not reach, frozen parameters, a merged last
    batch). Not an error: the study runs. The CLI prints it as one ``actlab: note:`` line."""
