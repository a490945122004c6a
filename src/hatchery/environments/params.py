"""What a refresh run is given: the environment it refreshes (MigrationParams'
`environment`, so the migration lock and backups find it) and where its data comes from."""

import uuid

from hatchery.migrations.params import MigrationParams


class RefreshParams(MigrationParams):
    source: str
    backup_id: uuid.UUID | None = None  # a backup of the source; a new one when None
