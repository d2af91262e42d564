"""Reports: the analysis and statistics (pure functions over what the store wrote), the
verdict's wording, the plots, and the HTML and Markdown reports. Reads a run directory
through `actlab.study.store` only, so a report can be rebuilt from the directory alone.

May import: `actlab.study` and everything below it.
"""
