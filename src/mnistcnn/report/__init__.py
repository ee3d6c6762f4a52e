"""A run's pictures and report page (`mnistcnn report`) and run tables (`mnistcnn compare`).

runs: finding runs and comparing them; page: the PNGs and report.html; figures: the matplotlib
figures themselves (also used by train, eval and predict --explain).
"""
