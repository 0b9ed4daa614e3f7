"""Web page and JSON API for captioning uploaded photos (``python -m icapnet.serve``)."""

from icapnet.web.app import create_app

__all__ = ["create_app"]
