"""What each configuration key means, as the JSON Schema tells editors (one entry per key)."""

from __future__ import annotations

# "<model>.<key>": one sentence; a test requires one for every key of every settings model.
DESCRIPTIONS: dict[str, str] = {
    # The top level.
    "Settings.issuer": "The authorization server's issuer: the audience clients' assertions "
                       "must name (with policy.audience: strict, the only one).",
    "Settings.public_url": "Where clients reach the gateway; an endpoint's public URL is this "
                           "plus its path (default: the issuer's origin).",
    "Settings.listen": "The public listener: address, port, TLS, shutdown and trusted proxies.",
    "Settings.admin": "The admin listener: /metrics, /healthz, /readyz, /reload, /inventory.",
    "Settings.backend": "The legacy identity provider requests are forwarded to.",
    "Settings.endpoints": "Paths that require client authentication, then are forwarded.",
    "Settings.passthrough": "Paths forwarded as they are (discovery documents are rewritten); "
                            "every other path is 404.",
    "Settings.policy": "Assertion rules for every client; each may be overridden per client.",
    "Settings.jwks_fetch": "How remote key sets (jwks_uri, federation issuers) are fetched.",
    "Settings.replay": "The replay ledger that remembers accepted jti values.",
    "Settings.audit": "The audit log: one JSON line per authentication decision.",
    "Settings.log": "The operational log (always on stderr).",
    "Settings.usage": "Usage per credential (first seen, last used, uses), shared in Redis "
                      "with replay.store: redis.",
    "Settings.limits": "Request size, time and concurrency limits, and failure brakes.",
    "Settings.federation": "Platform issuers (CI/CD, Kubernetes, SPIFFE) whose workload "
                           "tokens clients may use as their assertion.",
    "Settings.clients": "The clients, by client_id.",
    # listen, admin, tls
    "ListenSettings.host": "Address the public listener binds.",
    "ListenSettings.port": "Port of the public listener.",
    "ListenSettings.shutdown_grace": "On SIGTERM, how long requests in flight may take to "
                                     "finish after the listener stops accepting.",
    "ListenSettings.tls": "Serve https directly with this certificate and key.",
    "ListenSettings.trusted_proxies": "Networks (CIDR) of proxies whose X-Forwarded-For and "
                                      "X-Forwarded-Proto are believed; empty: none.",
    "TlsSettings.cert_file": "PEM certificate chain, leaf first (relative to the config file).",
    "TlsSettings.key_file": "PEM private key of the certificate (relative to the config file).",
    "AdminSettings.host": "Address the admin listener binds (keep it private).",
    "AdminSettings.port": "Port of the admin listener.",
    # backend
    "BackendSettings.url": "Base URL of the legacy IdP; the request path is kept.",
    "BackendSettings.timeout": "Budget of one backend exchange, to the whole answer.",
    "BackendSettings.keepalive": "How long an idle backend connection is kept for reuse; keep "
                                 "it below the backend's own idle timeout (0s: no reuse).",
    # policy and its per-client overrides
    "PolicySettings.algorithms": "JWS algorithms accepted for client assertions.",
    "PolicySettings.max_lifetime": "Longest exp - iat (or exp - now without iat) accepted.",
    "PolicySettings.clock_skew": "Tolerance applied to exp, iat, nbf and certificate validity.",
    "PolicySettings.audience": "strict: aud must be the issuer; compat: also the endpoint's "
                               "public URL.",
    "PolicySettings.require_typ": "Require typ client-authentication+jwt (explicit typing).",
    "PolicySettings.certificate_expiry_warning": "How long before a client certificate expires "
                                                 "check warns and the alert fires.",
    "PolicySettings.refuse_expired_certificates": "Refuse a registered key whose x5c "
                                                  "certificate has expired.",
    "PolicySettings.key_max_age": "A key first seen longer ago than this is flagged old "
                                  "(e.g. 365d); unset: off.",
    "PolicySettings.key_unused_after": "A key not used for longer than this is flagged "
                                       "unused (e.g. 30d); unset: off.",
    "PolicySettings.client_dormant_after": "A client without a successful authentication for "
                                           "longer than this is dormant (e.g. 90d); unset: off.",
    "PolicySettings.max_keys_per_client": "More registered keys than this is warned about; "
                                          "unset: off.",
    # jwks_fetch
    "JwksFetchSettings.timeout": "Budget of one key-set fetch, redirects and body included.",
    "JwksFetchSettings.min_ttl": "Shortest time a fetched key set is cached.",
    "JwksFetchSettings.max_ttl": "Longest time a fetched key set is cached.",
    "JwksFetchSettings.max_stale": "How long the last good keys serve on while fetches fail.",
    "JwksFetchSettings.unknown_kid_refresh": "At most one forced refetch per key set per "
                                             "interval, on an unknown kid.",
    "JwksFetchSettings.max_bytes": "Largest key-set document accepted.",
    "JwksFetchSettings.allow_http": "Allow plain-http key URLs (tests and labs only).",
    "JwksFetchSettings.allow_private_networks": "Let fetches reach loopback, private and "
                                                "link-local addresses (SSRF guard off).",
    "JwksFetchSettings.ca_file": "Extra trust anchors (PEM) for clients' jwks_uri over https.",
    "JwksFetchSettings.ready_without_keys": "Report ready before every remote key set's first "
                                            "fetch has settled.",
    # replay
    "ReplaySettings.store": "memory (one process) or redis (several processes or replicas).",
    "ReplaySettings.redis_url": "Redis server URL (redis:// or rediss://).",
    "ReplaySettings.redis_sentinels": "Sentinel addresses (host:port) instead of redis_url.",
    "ReplaySettings.redis_sentinel_master": "The master's name known to the sentinels.",
    "ReplaySettings.redis_cluster_nodes": "Cluster seed nodes (host:port) instead of redis_url.",
    "ReplaySettings.redis_username": "Redis ACL user name.",
    "ReplaySettings.redis_password": "Redis password: the name of an environment variable, "
                                     "written redis_password: !env NAME.",
    "ReplaySettings.redis_password_file": "A file holding the Redis password.",
    "ReplaySettings.redis_max_connections": "Most connections to Redis per process.",
    "ReplaySettings.timeout": "Budget of one replay check; past it the request fails closed.",
    "ReplaySettings.on_store_error": "What a failed check does: reject (fail closed), always.",
    "ReplaySettings.max_entries": "Most jti values the memory ledger (or the local tier) holds.",
    # audit and log
    "AuditSettings.output": "stdout, off, or a file path (appended to; reopened on SIGHUP and "
                            "SIGUSR1).",
    "LogSettings.format": "text or json lines.",
    "LogSettings.level": "Least severe level logged.",
    # usage
    "UsageSettings.enabled": "Count each accepted authentication per credential (false: "
                             "nothing is recorded).",
    "UsageSettings.flush_interval": "How often each process merges its usage counts into "
                                    "Redis and reads every replica's back (1s to 5m).",
    # limits
    "LimitSettings.max_body_bytes": "Largest request body accepted on an endpoint.",
    "LimitSettings.max_line_size": "Longest request line.",
    "LimitSettings.max_header_size": "Longest header field.",
    "LimitSettings.max_headers": "Most header fields per request.",
    "LimitSettings.body_timeout": "Budget to receive a whole request body.",
    "LimitSettings.keepalive_timeout": "How long an idle client connection is kept open.",
    "LimitSettings.max_in_flight": "Requests handled at once; beyond, 503.",
    "LimitSettings.max_connections": "Open client connections; beyond, 503.",
    "LimitSettings.failures_per_client": "Failure brake per client id (token bucket).",
    "LimitSettings.failures_per_address": "Failure brake per client address (token bucket).",
    "LimitSettings.max_tracked": "Keys each failure brake tracks at most.",
    "BucketSettings.rate": "Tokens returned per second.",
    "BucketSettings.burst": "Failures allowed in a row before requests must wait.",
    # clients
    "ClientSettings.jwks": "The client's public keys, inline (a JWK Set).",
    "ClientSettings.jwks_file": "A file holding the client's JWK Set (re-read on reload).",
    "ClientSettings.jwks_uri": "Where the client publishes its JWK Set (https).",
    "ClientSettings.backend_auth": "How the gateway authenticates to the backend for this "
                                   "client.",
    "ClientSettings.algorithms": "Overrides policy.algorithms for this client.",
    "ClientSettings.max_lifetime": "Overrides policy.max_lifetime for this client.",
    "ClientSettings.clock_skew": "Overrides policy.clock_skew for this client.",
    "ClientSettings.audience": "Overrides policy.audience for this client.",
    "ClientSettings.require_typ": "Overrides policy.require_typ for this client.",
    "ClientSettings.certificate_expiry_warning": "Overrides policy.certificate_expiry_warning "
                                                 "for this client.",
    "ClientSettings.refuse_expired_certificates": "Overrides "
                                                  "policy.refuse_expired_certificates.",
    "ClientSettings.key_max_age": "Overrides policy.key_max_age for this client.",
    "ClientSettings.key_unused_after": "Overrides policy.key_unused_after for this client.",
    "ClientSettings.client_dormant_after": "Overrides policy.client_dormant_after for this "
                                           "client.",
    "ClientSettings.max_keys_per_client": "Overrides policy.max_keys_per_client for this "
                                          "client.",
    "ClientSettings.key_expiry": "Registered keys by kid or RFC 7638 thumbprint, each with "
                                 "the last day (UTC) it is accepted; refused from the next.",
    "ClientSettings.retire": "Keys being rotated out, by kid or thumbprint: accepted (and "
                             "their uses counted) through this day (UTC), refused after.",
    "ClientSettings.enabled": "false: the client is offboarded, refused like an unknown one "
                              "(reason client_disabled; its keys still checked).",
    "ClientSettings.allow_assertion_reuse": "Accept the byte-identical assertion again until "
                                            "it expires (clients that re-send one).",
    "ClientSettings.legacy_auth": "Migration mode: shared secrets still let through, until a "
                                  "date.",
    "ClientSettings.federated": "Platform identities accepted as this client's assertion.",
    "ClientSettings.certificate": "A CA-anchored certificate identity (x5c in the assertion).",
    "ClientSettings.owner": "Who owns this client (a team, a person): shown by the inventory "
                            "(GET /inventory), never in metrics.",
    "ClientSettings.contact": "Whom to reach about this client (an address, a channel): "
                              "shown by the inventory only.",
    "ClientSettings.description": "What this client is for: shown by the inventory only.",
    "BackendAuthSettings.method": "client_secret_basic, client_secret_post or none.",
    "BackendAuthSettings.secret": "The backend secret: the name of an environment variable, "
                                  "written secret: !env NAME (never the secret inline).",
    "BackendAuthSettings.secret_file": "A file holding the backend secret.",
    "LegacyAuthSettings.allow": "Shared-secret methods still accepted.",
    "LegacyAuthSettings.until": "Last day (UTC) they are accepted.",
    "LegacyAuthSettings.since": "Day the secret methods were deprecated (the Deprecation "
                                "header); without it, no such header.",
    # certificates
    "CertificateSettings.ca_file": "Trust anchors (PEM bundle) the client's chain must lead to; "
                                   "re-read on reload.",
    "CertificateSettings.subject": "The leaf's exact subject (RFC 4514, compared as a parsed "
                                   "name).",
    "CertificateSettings.san": "Instead of subject: a subjectAltName the leaf must hold.",
    "CertificateSettings.crl_file": "A certificate revocation list (PEM or DER); re-read on "
                                    "reload.",
    "SanSettings.dns": "A DNS name.",
    "SanSettings.uri": "A URI (e.g. a SPIFFE ID).",
    "SanSettings.email": "An e-mail address (rfc822Name).",
    # federation
    "FederationSettings.issuers": "The platforms trusted to issue workload tokens, by the "
                                  "operator's name for each.",
    "FederationIssuerSettings.issuer": "Compared byte for byte with the token's iss.",
    "FederationIssuerSettings.trust_domain": "SPIFFE: JWT-SVIDs whose sub is in this trust "
                                             "domain (with preset: spiffe).",
    "FederationIssuerSettings.discovery": "Keys from the jwks_uri of the issuer's "
                                          "openid-configuration document.",
    "FederationIssuerSettings.jwks_uri": "Keys fetched from this URL.",
    "FederationIssuerSettings.jwks_file": "A static key set in a file.",
    "FederationIssuerSettings.jwks": "A static key set, inline.",
    "FederationIssuerSettings.bundle_endpoint": "SPIFFE: the trust domain's bundle endpoint.",
    "FederationIssuerSettings.jwks_hosts": "With discovery: hosts the jwks_uri may be on "
                                           "besides the issuer's.",
    "FederationIssuerSettings.algorithms": "JWS algorithms accepted from this issuer.",
    "FederationIssuerSettings.preset": "The platform whose subject and claim shapes the lints "
                                       "apply: github, gitlab, kubernetes, spiffe or none.",
    "FederationIssuerSettings.ca_file": "Extra trust anchors (PEM) for this issuer's https.",
    "FederationIssuerSettings.bearer_token_file": "A token sent as Authorization: Bearer to "
                                                  "this issuer's endpoints, re-read per fetch.",
    "FederationIssuerSettings.allow_private_networks": "Let this issuer's fetches reach private "
                                                       "and loopback addresses.",
    "FederatedTrustSettings.name": "Unique within the client; in logs and a metric label.",
    "FederatedTrustSettings.issuer": "A name under federation.issuers.",
    "FederatedTrustSettings.audience": "The token's aud must be exactly this, alone.",
    "FederatedTrustSettings.subject": "The token's sub, exactly.",
    "FederatedTrustSettings.subject_pattern": "The token's sub: * within one segment (never / "
                                              "or :), ** across / (never :).",
    "FederatedTrustSettings.claims": "Claims that must hold (a list: any of); a key starting "
                                     "with / is a JSON Pointer.",
    "FederatedTrustSettings.max_lifetime": "Longest exp - iat; replaces the policy's.",
    "FederatedTrustSettings.replay": "single_use: jti required and recorded; reuse: the same "
                                     "token again until exp.",
    "FederatedTrustSettings.mode": "enforce, or shadow: evaluated and counted, never "
                                   "authenticates.",
    "FederatedTrustSettings.allow_any_audience": "Accept a trust without audience (any aud).",
    "FederatedTrustSettings.allow_platform_audience": "Accept a platform's default audience.",
    "FederatedTrustSettings.allow_mutable_identity": "Accept pinning names instead of "
                                                     "immutable ids.",
    "FederatedTrustSettings.allow_broad_pattern": "Accept a pattern without a literal owner.",
    "FederatedTrustSettings.allow_default_service_account": "Accept a Kubernetes default "
                                                            "service account.",
    "FederatedTrustSettings.allow_long_reuse": "Accept reuse with max_lifetime over 1h.",
    "FederatedTrustSettings.allow_http_issuer": "Accept a plain-http issuer.",
}
