#!/usr/bin/python3
"""Test mail servers for tests/netns/e2e.sh, on Debian's python3-aiosmtpd.

  smtp_server.py mx LOG [PORT]
      An MX: accepts mail for any domain on every local address (port 25 by default),
      no authentication, like a remote mail server a bot delivers to directly.
  smtp_server.py submission LOG CERT KEY USER PASSWORD [PORT]
      The ISP's submission relay: port 587 by default, STARTTLS required before AUTH,
      AUTH (PLAIN, LOGIN) required before MAIL.

Each accepted message appends one line to LOG:
  <kind> peer=<client address> port=<client port> at=<Unix time> from=<MAIL FROM> \
      to=<RCPT,...> subject=<Subject>
so the test can check what arrived, and write the abuse report a receiving ISP would send
(the sender's address and port as this server saw them, after the router's NAT, and the
time). Runs until killed.
"""

import asyncio
import ssl
import sys
import time

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Recorder:
    """Accepts every message and records it in the log file."""

    def __init__(self, kind, log_path):
        self.kind = kind
        self.log_path = log_path

    async def handle_DATA(self, server, session, envelope):
        subject = ""
        for line in envelope.content.decode("utf-8", "replace").splitlines():
            if not line:
                break
            if line.lower().startswith("subject:"):
                subject = line.split(":", 1)[1].strip()
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(
                f"{self.kind} peer={session.peer[0]} port={session.peer[1]} "
                f"at={time.time():.3f} from={envelope.mail_from} "
                f"to={','.join(envelope.rcpt_tos)} subject={subject}\n"
            )
        return "250 OK: queued"


class Credentials:
    """Checks AUTH PLAIN/LOGIN against one user name and password."""

    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        return AuthResult(success=ok, handled=False)


def main(argv):
    if len(argv) < 3 or argv[1] not in ("mx", "submission"):
        sys.exit(__doc__)
    kind, log_path = argv[1], argv[2]
    if kind == "mx":
        port = int(argv[3]) if len(argv) > 3 else 25

        def factory():
            return SMTP(Recorder("mx", log_path), hostname="mx.test", timeout=30)

    else:
        if len(argv) < 7:
            sys.exit(__doc__)
        cert, key, user, password = argv[3:7]
        port = int(argv[7]) if len(argv) > 7 else 587
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        credentials = Credentials(user, password)

        def factory():
            return SMTP(
                Recorder("submission", log_path),
                hostname="relay.isp.test",
                tls_context=context,
                require_starttls=True,
                auth_required=True,
                auth_require_tls=True,
                authenticator=credentials,
                timeout=30,
            )

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(factory, host="0.0.0.0", port=port, reuse_address=True)
    )
    print(f"{kind} server listening on port {port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main(sys.argv)
