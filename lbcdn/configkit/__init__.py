"""The configuration toolkit: ConfigError, field helpers, the reflective loader, ${ENV}
interpolation, name checks and HTTP limits. Any package may import it; it imports nothing else
from lbcdn (tests/test_layers.py keeps it so), while lbcdn.config (the root schema and the
loader) sits above the component configs built with it."""
