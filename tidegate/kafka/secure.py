"""The secured embedded broker's material: a CA, the broker's certificate, SCRAM principals.

``tidegate broker start --secure`` makes these once, under ``<broker dir>/secure``:

- ``ca.pem``: the CA certificate every client trusts (``KAFKA_SSL_CA_LOCATION``);
- ``broker.p12``: the broker's key and certificate for 127.0.0.1 and localhost (PKCS#12);
- ``credentials.json`` (mode 0600): a random password per principal: ``admin`` (the super
  user the broker itself runs as), one per stage, and ``operator`` (the CLI's user);
- ``client.properties`` (mode 0600): the operator's settings for Kafka's own tools
  (``kafka-console-consumer.sh --consumer.config``, ``kafka-acls.sh --command-config``).

Example::

    material = ensure_material(broker_dir / "secure")
    material.client_security("ingest")   # {'security.protocol': 'SASL_SSL', ...}
    material.environment("ingest")        # the KAFKA_* variables of the ingest process
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from tidegate.errors import BrokerError, BrokerStartError
from tidegate.kafka.jars import require_tool
from tidegate.settings import ClientConfig
from tidegate.topics import STAGE_ORDER

__all__ = [
    "ADMIN", "MECHANISM", "OPERATOR", "PRINCIPALS", "SecureMaterial", "create_principals",
    "ensure_material", "load_material", "write_private",
]

ADMIN = "admin"
OPERATOR = "operator"
PRINCIPALS: tuple[str, ...] = (*STAGE_ORDER, OPERATOR)
MECHANISM = "SCRAM-SHA-512"
_ITERATIONS = 8192
_CREDENTIALS = "credentials.json"
_DAYS = 3650  # the CA and the certificate live as long as the data dir: a test or a laptop


@dataclass(frozen=True)
class SecureMaterial:
    """Where the secure broker's files are, and every principal's password."""

    directory: Path
    passwords: dict[str, str]
    keystore_password: str

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker.p12"

    def password(self, user: str) -> str:
        try:
            return self.passwords[user]
        except KeyError:
            raise BrokerError(f"the secure broker has no principal {user!r}") from None

    def client_security(self, user: str) -> dict[str, str]:
        """librdkafka security settings for ``user`` on the secure listener."""
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": MECHANISM,
                "sasl.username": user, "sasl.password": self.password(user),
                "ssl.ca.location": str(self.ca)}

    def environment(self, user: str) -> dict[str, str]:
        """The same settings as the environment variables every tidegate process reads."""
        return {"KAFKA_" + key.upper().replace(".", "_"): value
                for key, value in self.client_security(user).items()}

    def jaas(self, user: str, module: str = "scram.ScramLoginModule") -> str:
        return (f"org.apache.kafka.common.security.{module} required "
                f'username="{user}" password="{self.password(user)}"')


def load_material(directory: Path) -> SecureMaterial | None:
    """The material in ``directory``, or None when ``broker start --secure`` never made it."""
    try:
        data = json.loads((directory / _CREDENTIALS).read_text())
        return SecureMaterial(directory=directory, passwords=dict(data["passwords"]),
                              keystore_password=str(data["keystore_password"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_material(directory: Path) -> SecureMaterial:
    """Load the material, making what is missing: passwords first, then the certificates."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    material = load_material(directory)
    if material is None:
        # url-safe tokens: no quote, comma, '=' or ']' to escape in JAAS or --add-scram
        material = SecureMaterial(
            directory=directory,
            passwords={user: secrets.token_urlsafe(24) for user in (ADMIN, *PRINCIPALS)},
            keystore_password=secrets.token_urlsafe(24))
        write_private(directory / _CREDENTIALS, json.dumps(
            {"passwords": material.passwords, "keystore_password": material.keystore_password},
            indent=2))
    if not material.keystore.exists():
        _make_certificates(material)
    write_private(directory / "client.properties", "".join(f"{key}={value}\n" for key, value in {
        "security.protocol": "SASL_SSL", "sasl.mechanism": MECHANISM,
        "sasl.jaas.config": material.jaas(OPERATOR) + ";",
        "ssl.truststore.type": "PEM", "ssl.truststore.location": str(material.ca)}.items()))
    return material


def create_principals(config: ClientConfig, material: SecureMaterial, *,
                      timeout: float = 30.0) -> None:
    """Create (or reset) every principal's SCRAM credential through the admin's connection."""
    admin = AdminClient({"log_level": 3, **config})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, _ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, material.password(user).encode())
        for user in PRINCIPALS]
    futures = admin.alter_user_scram_credentials(upserts, request_timeout=timeout)
    for user, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise BrokerStartError(f"cannot create the principal {user}: "
                                   f"{exc.args[0].str()}") from exc


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created so, never readable for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def _make_certificates(material: SecureMaterial) -> None:
    """A CA and a broker certificate signed by it for 127.0.0.1 and localhost, with openssl."""
    openssl = require_tool("openssl")
    where = material.directory
    ca_key, key, csr, cert = (where / name for name in
                              ("ca.key", "broker.key", "broker.csr", "broker.pem"))
    extensions = where / "broker.ext"
    extensions.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                          "extendedKeyUsage=serverAuth\n"
                          "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out",
         material.ca, "-days", _DAYS, "-subj", "/CN=tidegate embedded broker CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", material.ca, "-CAkey", ca_key,
         "-set_serial", f"0x{secrets.token_hex(16)}", "-days", _DAYS, "-extfile", extensions,
         "-out", cert],
        # the password through the environment: never on a command line others can read
        ["pkcs12", "-export", "-in", cert, "-inkey", key, "-certfile", material.ca,
         "-name", "broker", "-out", material.keystore, "-passout", "env:TIDEGATE_KEYSTORE_PW"],
    ]
    env = {**os.environ, "TIDEGATE_KEYSTORE_PW": material.keystore_password}
    old = os.umask(0o077)
    try:
        for step in steps:
            result = subprocess.run([openssl, *map(str, step)], capture_output=True, text=True,
                                    env=env, check=False)
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
                raise BrokerStartError(f"openssl {step[0]} failed: {' '.join(tail)}")
    finally:
        os.umask(old)
    for leftover in (csr, extensions, key, cert, ca_key):  # the keystore holds what is needed
        leftover.unlink(missing_ok=True)
    material.ca.chmod(0o644)
