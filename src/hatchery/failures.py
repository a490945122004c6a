"""The root of every failure the worker's code names: a git command, a PostgreSQL tool, a
project's child process, its sandbox or virtualenv, the migration lock, a backup, a job,
a step. A run's step fails with its message; anything else that a step raises is a bug
(logged with its traceback all the same). HTTP errors (hatchery.errors) are the api's."""


class Failure(RuntimeError):
    pass
