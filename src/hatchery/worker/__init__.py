"""arq worker settings and the thin job functions that call Hatchery's services."""
