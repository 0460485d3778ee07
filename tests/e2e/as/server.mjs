// Authorization server for the client attester end-to-end tests: node-oidc-provider with
// OAuth 2.0 Attestation-Based Client Authentication (draft -12 in oidc-provider 9.13.3),
// trusting one client attester through its jwks_uri. Configuration comes from the environment
// (see README.md); nothing is fetched at start-up, so the attester may start later.
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { inflateSync } from 'node:zlib';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

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

// Token Status List (draft-ietf-oauth-status-list-20) reader, written here from the draft, not
// from the attester's code. A Client Attestation JWT that carries
// `status: {status_list: {idx, uri}}` is accepted only if the status at idx is 0 (VALID).
// The list is fetched only from the trusted attester's origin (no fetching of arbitrary
// URLs named by a token), verified with the attester's JWKS (typ statuslist+jwt, exp), its
// `sub` must equal the uri, and it is cached for its `ttl` (at most AS_STATUS_MAX_CACHE_MS).
const requireStatus = env('AS_REQUIRE_STATUS', '0') === '1';
const statusMaxCacheMs = Number(env('AS_STATUS_MAX_CACHE_MS', '300000'));
const statusLists = new Map();

async function fetchStatusList(uri) {
  const cached = statusLists.get(uri);
  if (cached && Date.now() < cached.expiresAt) {
    return cached;
  }
  if (new URL(uri).origin !== jwksUri.origin) {
    throw new Error('status list uri is not at the trusted attester');
  }
  const response = await fetch(uri, {
    headers: { accept: 'application/statuslist+jwt' },
    signal: AbortSignal.timeout(5000),
  });
  if (response.status !== 200) {
    throw new Error(`status list fetch answered ${response.status}`);
  }
  const { payload } = await jose.jwtVerify(await response.text(), attesterJwks, {
    typ: 'statuslist+jwt',
    requiredClaims: ['sub', 'iat'],
  });
  if (payload.sub !== uri) {
    throw new Error('status list sub is not its uri');
  }
  const { bits, lst } = payload.status_list ?? {};
  if (![1, 2, 4, 8].includes(bits) || typeof lst !== 'string') {
    throw new Error('status list is malformed');
  }
  // section 4.1: lst is base64url of the ZLIB (RFC 1950) DEFLATE-compressed byte array
  const list = { bits, bytes: inflateSync(Buffer.from(lst, 'base64url')) };
  const ttlMs = typeof payload.ttl === 'number' ? payload.ttl * 1000 : 0;
  list.expiresAt = Date.now() + Math.min(ttlMs, statusMaxCacheMs);
  statusLists.set(uri, list);
  return list;
}

// Section 4.1: the status of index idx takes `bits` bits starting at bit idx * bits, counting
// from the least significant bit of byte 0 (so byte floor(idx * bits / 8), shifted right).
function statusAt(list, idx) {
  const position = idx * list.bits;
  const byte = list.bytes[Math.floor(position / 8)];
  if (byte === undefined) {
    throw new Error('status index outside the list');
  }
  return (byte >> (position % 8)) & ((1 << list.bits) - 1);
}

async function checkStatus(payload) {
  const ref = payload.status?.status_list;
  if (ref === undefined) {
    if (requireStatus) {
      throw new errors.InvalidClientAuth('Client Attestation has no status');
    }
    return;
  }
  if (!Number.isInteger(ref.idx) || ref.idx < 0 || typeof ref.uri !== 'string') {
    throw new errors.InvalidClientAuth('Client Attestation status is malformed');
  }
  let value;
  try {
    value = statusAt(await fetchStatusList(ref.uri), ref.idx);
  } catch (cause) {
    throw new errors.InvalidClientAuth(`status list unusable: ${cause.message}`);
  }
  if (value !== 0) {
    const names = { 1: 'invalid', 2: 'suspended' };
    throw new errors.InvalidClientAuth(`Client Attestation status is ${names[value] ?? value}`);
  }
}

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
        // Everything verified by now; this is the place for extra policy: the status list.
        async assertAttestationJwtAndPop(ctx, attestation) {
          await checkStatus(attestation.payload);
        },
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
