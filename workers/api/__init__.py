"""execq's HTTP API (``execq api``): signals from any producer into the outbox.

``workers.api.app.create_app`` builds the ASGI app; see its docstring for the
routers and how another surface is added. Importing this package imports no
web framework: only ``workers.api.app`` and the routers do.
"""
