"""The one exception type raised for bad data files and records."""


class DataError(ValueError):
    """A data file or record is unusable.

    The message always starts with the file, then the position inside it, then the field, so that the
    user can go straight to the fix, e.g.
    ``data/train.json: record 17: field 'output' must be a string, got int``.

    Record numbers are 0-based positions in the JSON list (or among the non-blank lines of a JSONL
    file); line and column numbers are 1-based, as editors show them.
    """
