"""The web UI (`songstep ui`): a Gradio Blocks app over the server's job queue.

Needs the `[ui]` extra (gradio); the app is built by `songstep.ui.app.create_ui_app`.
"""
