"""The model server: codecs (decode/encode by MIME type), predictor (model per worker), app (Flask), server.

Nothing here imports MXNet at package import time: the gunicorn master must not initialise MXNet before
it forks its workers.
"""
