"""The one error a command line handler raises for a user's mistake.

Bad CLI or config input gets one line naming the field and a non-zero exit,
never a traceback (DESIGN.md, Conventions). Handlers raise `CliError`;
`imsaka.cli.main` prints it as ``imsaka: error: <message>`` and exits with `code`.
"""

from __future__ import annotations


class CliError(Exception):
    """A user's mistake on the command line or in a config file.

    The message must name the offending argument or field (``--k: ...``,
    ``[pcscf].port: ...``) and must never contain secret values (K, OP, OPc, CK, IK).
    """

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
