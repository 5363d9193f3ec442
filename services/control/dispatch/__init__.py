"""Clients of the cluster and inference, and the reconciler folding cluster state in the store."""
