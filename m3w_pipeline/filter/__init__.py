"""Deciding what stays: node and document filters, quality scores and dedup, each as a reason or None."""
