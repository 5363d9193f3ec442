"""The web console: server-side pages (Jinja2 + htmx, uPlot for charts, all vendored) mounted at
/console on the OpenAI-compatible HTTP app.

Every page calls control's public gRPC API, and the playground the COMPLETE core, with the
signed-in user's own key: privileges are decided there, never here, and their refusals are
shown as they are.
"""
