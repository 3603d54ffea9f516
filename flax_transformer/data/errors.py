"""The one exception the data package raises for a user's mistake."""


class DataError(ValueError):
    """Data cannot be read or batched as configured; the message says what to do."""
