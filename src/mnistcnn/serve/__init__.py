"""`mnistcnn serve`: a local web page to draw a digit and watch the model answer, and its HTTP API.

FastAPI + uvicorn (the `serve` extra); the page and its script are package data under `static/`
(no CDN: works offline). Never imports `mnistcnn.data` (torchvision).
"""
