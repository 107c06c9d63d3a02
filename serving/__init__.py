"""The serving processes: the rollout controller (`python -m serving.controller`), the model
server processes it runs, its Kubernetes executor and the one-server entry
(`python -m serving.serve`). Above `steps` (the controller runs promote's checks) and `pyfunc`.
"""
