"""The error every config check raises: all problems found, each with its YAML path."""

from __future__ import annotations


class ConfigError(Exception):
    """Everything wrong with a configuration: a list of (YAML path, message).

    For problems with the file as a whole (unreadable, YAML syntax) the path is the file name,
    with `:line:column` when known.
    """

    def __init__(self, problems: list[tuple[str, str]], source: str = "<config>") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(str(self))

    def lines(self) -> list[str]:
        return [f"{path}: {message}" if path else message for path, message in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.lines())
