"""The operator dashboard: a FastAPI app and one static page, served by the station daemon.

``create_app(station, settings)`` builds the app; nothing lives at module level, so a test (or a
second station in one process) gets its own app.
"""
from device.dashboard.settings import DashboardSettings

__all__ = ["DashboardSettings", "create_app"]


def create_app(station, settings: DashboardSettings):  # noqa: ANN001, ANN201 - re-exported lazily
    """Build the dashboard app for a running station (see device.dashboard.app.create_app)."""
    from device.dashboard.app import create_app as _create

    return _create(station, settings)
