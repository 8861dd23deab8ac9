from capstan_core.db import run_env
from capstan_inference.tables import metadata

run_env(metadata)
