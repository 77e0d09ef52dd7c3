from organizations.models import Organization
from webhooks.providers.registry import PROVIDERS
from webhooks.services.sources import SecretRequired, SourceNetworksError, ingest_url, source_create

from ._base import OperatorCommand, add_secret_arguments, find_given, parse_options


class Command(OperatorCommand):
    help = "Create a source: a provider connection with its own ingest URL."

    def add_command_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--provider", required=True, choices=sorted(PROVIDERS))
        parser.add_argument("--name", required=True)
        add_secret_arguments(
            parser,
            "secret",
            help="the provider's signing secret (generated when the provider lets us)",
            file_help="read the provider's signing secret from this file (one line ending is removed)",
        )
        parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE")
        parser.add_argument(
            "--allowed-network",
            action="append",
            default=[],
            metavar="CIDR",
            help="an address or network requests must come from (repeat for more; none: any address)",
        )

    def run(self, **options):
        secret = self.secret_from_options(options, "secret")
        organization = find_given(Organization.objects.all(), options["org"], field="slug")
        try:
            source, generated = source_create(
                organization=organization,
                provider=options["provider"],
                name=options["name"],
                secret=secret,
                options=parse_options(options["option"]),
                allowed_networks=options["allowed_network"],
            )
        except SecretRequired as exc:
            raise SecretRequired(f"{exc}; pass it with --secret-file PATH (- for standard input)") from None
        except SourceNetworksError as exc:
            raise SourceNetworksError(f"--allowed-network: {exc}") from None
        result = {
            "id": source.pk,
            "token": source.ingest_token,
            "ingest_url": ingest_url(source),
            "allowed_networks": source.allowed_networks,
        }
        text = f"Created source {source.pk} ({source.provider}).\nIngest URL: {ingest_url(source)}"
        if source.allowed_networks:
            text += f"\nAllowed networks: {', '.join(source.allowed_networks)}"
        if generated:
            # The only time a secret is shown: the platform made it and the tenant must copy it.
            result["secret"] = generated
            text += f"\nSigning secret (shown once): {generated}"
        return result, text
