from capstan_core.db import run_env
from capstan_gateway.identity.tables import metadata

run_env(metadata)
