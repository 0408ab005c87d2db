"""Placeholder replaced below."""


def render_html(diag, cdn: bool = False) -> str:
    return "<!doctype html><title>kddoctor</title>"
