"""The files of a model version on disk, shared by the model stores (adapters) and the loader (serving).

A version is a folder holding MODEL_FILE (LightGBM text) and META_FILE
(features, checksum, reference); a model directory's CHAMPION_FILE names
the version that serves. Kept below both rooms so that a store need not
import the serving code to know where a version's files are.
"""

MODEL_FILE = "model.txt"
META_FILE = "model.json"
CHAMPION_FILE = "champion"
