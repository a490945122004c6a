"""Running a project's Alembic migrations the way its authors do, isolated from Hatchery:
the child process and its sandbox, the project's virtualenvs and checkouts, revision
histories, the migration lock and backups. Infrastructure: it knows no domain model."""
