"""The meshd daemon: lifecycle, discovery service, API handlers."""
