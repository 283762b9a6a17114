"""Imports every adapter module so that each registers its models (one import line per module)."""
from wordspace.pipeline.models import speech  # noqa: F401
from wordspace.pipeline.models import beats  # noqa: F401
from wordspace.pipeline.models import text  # noqa: F401
from wordspace.pipeline.models import bundled  # noqa: F401
from wordspace.pipeline.models import static  # noqa: F401
from wordspace.pipeline.models import acoustic  # noqa: F401
from wordspace.pipeline.models import encodecmae  # noqa: F401
from wordspace.pipeline.models import s3prl_adapter  # noqa: F401
from wordspace.pipeline.models import whisper  # noqa: F401
