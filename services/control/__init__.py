"""The control plane (wired in app.py); imports services.common, never trainer/inference/cli."""
