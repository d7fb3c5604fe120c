"""Settings (environment variables prefixed ``SANGKIEN_``) and shipped configuration data."""

from sangkien.config.settings import Settings, Subscriber, shipped_workflows_dir

__all__ = ["Settings", "Subscriber", "shipped_workflows_dir"]
