"""One line for what pydantic found wrong with a record read from disk or Vault: the first problem, where it is.

A ValidationError's own text runs to several lines, with a link and the input's values, which may hold a secret
(a token written over a tenant's record); this names the place and the rule only.
"""

from __future__ import annotations

from pydantic import ValidationError


def first_problem(err: ValidationError, whole: str) -> str:
    """`where: why` (`whole` names the place when it is the value itself), or a JSON syntax error's own words."""
    problem = err.errors()[0]
    if problem["type"] == "json_invalid":
        return str(problem["msg"])
    where = ".".join(str(part) for part in problem["loc"]) or whole
    return f"{where}: {problem['msg']}"
