"""What can go wrong on the client side, each with the exit code the command returns.

ClientError              1  the server answered with an error
├── BadInput             2  a request file line is wrong (its number and what is wrong)
├── ServerUnreachable    3  nothing answers at the URL
├── AuthRefused          4  the server refused the key (401)
└── Interrupted        130  Ctrl-C while waiting (the batches keep running)
"""

from __future__ import annotations


class ClientError(Exception):
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(ClientError):
    exit_code = 2

    def __init__(self, source: str, line: int, problem: str) -> None:
        super().__init__(f"{source}, line {line}: {problem}")
        self.line = line


class ServerUnreachable(ClientError):
    exit_code = 3


class AuthRefused(ClientError):
    exit_code = 4


class ApiError(ClientError):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"{error_type} ({status}): {message}")
        self.status = status
        self.error_type = error_type


class Interrupted(ClientError):
    exit_code = 130
