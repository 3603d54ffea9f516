"""The one exception the data package raises for a user's mistake, and what gzip raises
for a file that is not complete gzip data."""

import gzip
import zlib

# Not gzip at all (or a bad CRC), cut short, damaged inside: each a different exception.
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


class DataError(ValueError):
    """Data cannot be read or batched as configured; the message says what to do."""
