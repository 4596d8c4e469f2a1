from django.apps import AppConfig


class IdentityConfig(AppConfig):
    """Models of the identity zone; the router keeps them in the ``identity`` database."""

    name = "imaging.identity"
    label = "identity"
    verbose_name = "Patient identities (identity zone)"
