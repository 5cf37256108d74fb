"""The one exception type for bad user input.

Anything raised as `UserError` reaches the user as a single line `codediff: error: ...` with exit
code 2. The message names the problem and the fix. Raise it before writing any output file.
"""


class UserError(Exception):
    """Bad input or environment that the user can fix; the message says how."""
