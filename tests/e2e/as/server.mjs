// Authorization server for the client attester end-to-end tests: node-oidc-provider with
// OAuth 2.0 Attestation-Based Client Authentication (draft -12 in oidc-provider 9.13.3),
// trusting one client attester through its jwks_uri. Configuration comes from the environment
// (see README.md); nothing is fetched at start-up, so the attester may start later.
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import * as jose from 'jose';
import Provider from 'oidc-provider';

function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) {
      throw new Error(`environment variable ${name} is required`);
    }
    return fallback;
  }
  return value;
}

function secret(name) {
  // 32 bytes, base64url; random per process unless given (tests never need them fixed).
  const value = process.env[name];
  const buf = value ? Buffer.from(value, 'base64url') : randomBytes(32);
  if (buf.byteLength !== 32) {
    throw new Error(`${name} must be 32 bytes, base64url`);
  }
  return buf;
}

const port = Number(process.argv[2] ?? env('AS_PORT', '0'));
const host = env('AS_HOST', '127.0.0.1');
const jwksUri = new URL(env('ATTESTER_JWKS_URI'));
// draft -12 dropped `iss`; when ATTESTER_ISSUER is set the AS also pins it (draft-07 receivers do).
const attesterIssuer = process.env.ATTESTER_ISSUER || undefined;
const clientId = env('AS_CLIENT_ID', 'attested-app');
const dpopClientId = env('AS_DPOP_CLIENT_ID', `${clientId}-dpop`);

// jose's remote JWKS cache: a key id that is not in the cached set triggers a refetch only after
// the cooldown; the cached set is reused for cacheMaxAge. A rotation test sets both high so the AS
// keeps serving from its cache while the attester rotates.
const attesterJwks = jose.createRemoteJWKSet(jwksUri, {
  cooldownDuration: Number(env('AS_JWKS_COOLDOWN_MS', '30000')),
  cacheMaxAge: Number(env('AS_JWKS_CACHE_MAX_AGE_MS', '600000')),
  timeoutDuration: Number(env('AS_JWKS_TIMEOUT_MS', '5000')),
});

// The AS's own signing key (ID tokens, JWT responses): not used by client_credentials with
// opaque tokens, but oidc-provider wants one; a fresh one per process.
const asKey = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(asKey.privateKey)), alg: 'RS256', use: 'sig' };

function buildProvider(issuer) {
  return new Provider(issuer, {
    jwks: { keys: [signingJwk] },
    clients: [
      {
        client_id: clientId,
        token_endpoint_auth_method: 'attest_jwt_client_auth',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
      {
        client_id: dpopClientId,
        token_endpoint_auth_method: 'attest_jwt_client_auth_dpop',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        dpop_bound_access_tokens: true,
      },
    ],
    clientAuthMethods: ['attest_jwt_client_auth', 'attest_jwt_client_auth_dpop'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      dPoP: { enabled: true, nonceSecret: secret('AS_DPOP_NONCE_SECRET') },
      attestClientAuth: {
        enabled: true,
        ack: 'draft-12',
        challengeSecret: secret('AS_ATTESTATION_CHALLENGE_SECRET'),
        // Called with the Client Attestation JWT's protected header and (unverified) payload.
        // The returned public key verifies the JWT signature; oidc-provider then checks typ,
        // alg, exp/iat (with clockTolerance), sub === client_id and cnf.jwk itself.
        async getAttestationSignaturePublicKey(ctx, header, payload) {
          if (attesterIssuer !== undefined && payload.iss !== attesterIssuer) {
            throw new Error('Client Attestation iss is not the trusted attester');
          }
          if (typeof header.kid !== 'string') {
            throw new Error('Client Attestation kid missing');
          }
          return attesterJwks(header);
        },
        // Everything verified by now; this is the place for extra policy.
        async assertAttestationJwtAndPop() {},
      },
    },
    async findAccount() {
      return undefined;
    },
  });
}

const server = createServer();
await new Promise((resolve) => { server.listen(port, host, resolve); });
const issuer = `http://${host}:${server.address().port}`;
const app = buildProvider(issuer);

// Rejections are logged as one JSON line each on stdout so that tests can tell apart reasons
// the AS reports on the wire only as `invalid_client`.
const logged = [
  'grant.error',
  'challenge.error',
  'introspection.error',
  'pushed_authorization_request.error',
  'server_error',
];
for (const event of logged) {
  app.on(event, (ctx, err) => {
    process.stdout.write(`${JSON.stringify({
      event,
      error: err.error ?? err.message,
      error_description: err.error_description,
      error_detail: err.error_detail,
      cause: err.cause?.code ?? err.cause?.message,
      client_id: ctx?.oidc?.client?.clientId,
    })}\n`);
  });
}

server.on('request', app.callback());
process.stdout.write(`AS ready ${issuer}\n`);

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
