// A real OpenID Connect / OAuth 2 authorization server for Airlock's end-to-end tests:
// panva's `oidc-provider` (https://github.com/panva/node-oidc-provider), configured from a
// JSON file and served on 127.0.0.1. Started by `e2e/src/oidc.rs`:
//
//     node server.mjs CONFIG.json        (or OIDC_CONFIG=CONFIG.json node server.mjs)
//
// Prints `ready <issuer>` on stdout once listening.
//
// Configuration (every field but `issuer` is optional):
//
//   {
//     "issuer": "http://127.0.0.1:PORT",     // listens on 127.0.0.1 and this URL's port
//     "port": PORT,                           // overrides the port taken from the issuer
//     "resource": {                           // the API the access tokens are for
//       "indicator": "https://api.airlock.test",   // RFC 8707 resource indicator (default)
//       "audience": "https://api.airlock.test",    // `aud` of the JWT (default: indicator)
//       "scope": "api:read api:write"              // scopes that API knows (default "")
//     },
//     "scopes": ["api:read"],                 // more scopes (openid email profile
//                                             // offline_access are always there)
//     "clients": [ {                          // oidc-provider client metadata, snake_case:
//       "client_id": "console",
//       "client_secret": "s3cret",            // omit with "token_endpoint_auth_method": "none"
//       "redirect_uris": ["http://127.0.0.1:1234/callback"],
//       "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
//       "token_endpoint_auth_method": "client_secret_basic"   // | client_secret_post | none
//     } ],                                    // response_types defaults to ["code"] when
//                                             // authorization_code is allowed, else []
//     "ttl": {                                // seconds
//       "AccessToken": 3600, "ClientCredentials": 3600, "RefreshToken": 86400,
//       "IdToken": 3600, "AuthorizationCode": 60, "Interaction": 600, "Session": 86400,
//       "Grant": 86400
//     },
//     "requirePkce": "public",                // "public" (S256 required for clients with
//                                             // token_endpoint_auth_method none) | "always"
//     "refreshTokens": "always"               // "always": every code / refresh grant of a
//                                             // client allowed the refresh_token grant gets
//                                             // a refresh token; "offline_access": only when
//                                             // that scope was granted (oidc-provider's rule)
//   }
//
// Tokens: access tokens (authorization_code, refresh_token and client_credentials grants) are
// JWTs (`typ: at+jwt`, RS256, key in /jwks) for the configured resource: it is the default
// resource of every request and is kept on refresh. They carry iss, sub (the login name, or
// the client_id for client_credentials), aud, client_id, scope, exp, iat, jti and, for users,
// `email`. ID tokens carry `email` too (conformIdTokenClaims is off). Refresh tokens rotate:
// each refresh returns a new one and consumes the old; presenting a consumed one fails with
// invalid_grant *and revokes the whole grant* (oidc-provider's reuse detection), so the newer
// refresh token dies as well. Replaying an authorization code does the same. Refresh tokens
// do not end with the provider's browser session (expiresWithSession is off). Note that
// oidc-provider silently drops `offline_access` from authorization requests that lack
// `prompt=consent`; with "refreshTokens": "always" that does not matter.
//
// Accounts: any login name is accepted with any password; sub = the login name, email =
// `<login>@example.test` (email_verified true), name = the login name.
//
// Login interaction: a small custom handler instead of oidc-provider's devInteractions, with
// a fixed, automatable contract (plain HTTP plus cookies, no JavaScript):
//   GET  /interaction/:uid          HTML page with one <form method="post" action=...>:
//                                   login prompt   -> action /interaction/:uid/login,
//                                                     fields `login` and `password`
//                                   consent prompt -> action /interaction/:uid/confirm
//   POST /interaction/:uid/login    (login=NAME&password=ANY) -> 303 back to /auth/:uid
//   POST /interaction/:uid/confirm  grants every requested scope/claim -> 303 to /auth/:uid
//   GET  /interaction/:uid/abort    ends the request with error=access_denied
// The interaction cookies are scoped to these paths, so a client needs a cookie jar.
//
// Test endpoints (not OAuth; for assertions and fault injection):
//   GET    /_test/stats          token endpoint requests so far:
//                                {"total": N, "grant_types": {"refresh_token":
//                                  {"requests": N, "succeeded": N, "failed": N}, ...},
//                                 "errors": {"invalid_grant": N, ...}}
//   DELETE /_test/stats          resets the counts
//   POST   /_test/revoke-grants  revokes grants (JSON body {"client_id"?, "account_id"?},
//                                empty = all): the grant and every token issued under it are
//                                deleted, as oidc-provider's own revocation does, so their
//                                refresh tokens then fail with invalid_grant. Answers
//                                {"revoked": N}.
// The standard revocation (/token/revocation) and introspection (/token/introspection)
// endpoints are enabled too.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const configPath = process.argv[2] ?? process.env.OIDC_CONFIG;
if (!configPath) {
  console.error('usage: node server.mjs CONFIG.json (or set OIDC_CONFIG)');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const issuer = config.issuer.replace(/\/$/, '');
const port = Number(config.port ?? new URL(issuer).port);

const resource = {
  indicator: config.resource?.indicator ?? 'https://api.airlock.test',
  scope: config.resource?.scope ?? '',
};
resource.audience = config.resource?.audience ?? resource.indicator;

const ttl = {
  AccessToken: 3600,
  ClientCredentials: 3600,
  RefreshToken: 86400,
  IdToken: 3600,
  AuthorizationCode: 60,
  Interaction: 600,
  Session: 86400,
  Grant: 86400,
  ...config.ttl,
};

// --- Storage: an in-memory adapter that can be enumerated (for /_test/revoke-grants). ---

const store = new Map(); // "Model:id" -> { payload, expiresAt (ms) | undefined }

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.payload;
}

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    store.set(this.key(id), { payload, expiresAt });
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    for (const key of store.keys()) {
      if (key.startsWith(`${this.model}:`) && live(key)?.uid === uid) return live(key);
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const key of store.keys()) {
      if (key.startsWith(`${this.model}:`) && live(key)?.userCode === userCode) return live(key);
    }
    return undefined;
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const [key, { payload }] of store) {
      if (key.startsWith(`${this.model}:`) && payload.grantId === grantId) store.delete(key);
    }
  }
}

// Delete a grant and everything issued under it, from every model.
function revokeGrant(grantId) {
  for (const [key, { payload }] of store) {
    if (key === `Grant:${grantId}` || payload.grantId === grantId) store.delete(key);
  }
}

// --- Keys, accounts, clients. ---

const signingKey = {
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: `test-${randomBytes(6).toString('hex')}`,
  alg: 'RS256',
  use: 'sig',
};

async function findAccount(_ctx, id) {
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: `${id}@example.test`,
        email_verified: true,
        name: id,
        preferred_username: id,
      };
    },
  };
}

const clients = (config.clients ?? []).map((client) => {
  const grantTypes = client.grant_types ?? ['authorization_code', 'refresh_token'];
  return {
    response_types: grantTypes.includes('authorization_code') ? ['code'] : [],
    redirect_uris: [],
    ...client,
    grant_types: grantTypes,
  };
});

const scopes = [
  ...new Set(['openid', 'offline_access', 'email', 'profile', ...(config.scopes ?? []),
    ...resource.scope.split(' ').filter(Boolean)]),
];

// --- The provider. ---

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  clients,
  jwks: { keys: [config.jwk ?? signingKey] },
  findAccount,
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  scopes,
  // ID tokens carry the scope's claims (email) even though an access token exists.
  conformIdTokenClaims: false,
  ttl,
  rotateRefreshToken: true,
  // Refresh tokens live for ttl.RefreshToken, independent of the provider's browser session
  // (oidc-provider's default ties them to the session unless offline_access was granted).
  expiresWithSession: () => false,
  issueRefreshToken(_ctx, client, source) {
    if (!client.grantTypeAllowed('refresh_token')) return false;
    return config.refreshTokens === 'offline_access' ? source.scopes.has('offline_access') : true;
  },
  pkce: {
    required: (_ctx, client) => config.requirePkce === 'always' || client.clientAuthMethod === 'none',
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Every request without a `resource` parameter is for the configured API ...
      defaultResource: (_ctx, _client, oneOf) => oneOf ?? resource.indicator,
      // ... also at the token endpoint when the authorization code / refresh token was
      // granted for it (otherwise openid requests would get opaque userinfo tokens).
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, indicator) {
        if (indicator !== resource.indicator) {
          throw new errors.InvalidTarget(`unknown resource ${indicator}`);
        }
        return {
          scope: resource.scope,
          audience: resource.audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: ttl.AccessToken,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  extraTokenClaims(_ctx, token) {
    return token.accountId ? { email: `${token.accountId}@example.test` } : undefined;
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
});
provider.proxy = false;

// Count token endpoint requests per grant type, whatever their outcome.
const emptyStats = () => ({ total: 0, grant_types: {}, errors: {} });
let stats = emptyStats();
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route !== 'token') return;
  const grantType = ctx.oidc.params?.grant_type ?? ctx.oidc.body?.grant_type ?? 'unknown';
  const entry = (stats.grant_types[grantType] ??= { requests: 0, succeeded: 0, failed: 0 });
  stats.total += 1;
  entry.requests += 1;
  if (ctx.status >= 200 && ctx.status < 300) {
    entry.succeeded += 1;
  } else {
    entry.failed += 1;
    const error = ctx.body?.error ?? `http_${ctx.status}`;
    stats.errors[error] = (stats.errors[error] ?? 0) + 1;
  }
});

// --- Interaction (login + consent) pages. ---

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(res, status, title, body) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
  });
  res.end(`<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>`
    + `<body><h1>${escapeHtml(title)}</h1>\n${body}\n</body></html>\n`);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction uid mismatch');
  const { prompt, params, session, grantId } = details;
  const base = `/interaction/${encodeURIComponent(uid)}`;

  if (req.method === 'GET' && action === undefined) {
    if (prompt.name === 'login') {
      return page(res, 200, 'Sign-in', `<p>client: ${escapeHtml(params.client_id)}</p>
<form method="post" action="${base}/login">
  <input type="text" name="login" required value="${escapeHtml(params.login_hint ?? '')}">
  <input type="password" name="password" required>
  <button type="submit">Sign-in</button>
</form>`);
    }
    return page(res, 200, 'Authorize', `<p>client: ${escapeHtml(params.client_id)}</p>
<p>scope: ${escapeHtml(params.scope ?? '')}</p>
<form method="post" action="${base}/confirm">
  <button type="submit">Continue</button>
</form>
<a href="${base}/abort">Cancel</a>`);
  }

  if (req.method === 'POST' && action === 'login') {
    const form = new URLSearchParams(await readBody(req));
    const login = form.get('login');
    if (prompt.name !== 'login' || !login) {
      return page(res, 400, 'Bad request', '<p>expected a login prompt and a login name</p>');
    }
    return provider.interactionFinished(req, res, { login: { accountId: login } }, {
      mergeWithLastSubmission: false,
    });
  }

  if (req.method === 'POST' && action === 'confirm') {
    if (prompt.name !== 'consent') {
      return page(res, 400, 'Bad request', '<p>expected a consent prompt</p>');
    }
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scope] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scope.join(' '));
    }
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, {
      mergeWithLastSubmission: true,
    });
  }

  if (req.method === 'GET' && action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }

  return page(res, 404, 'Not found', '');
}

// --- Test endpoints. ---

function json(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(value));
}

async function testEndpoint(req, res, path) {
  if (path === '/_test/stats' && req.method === 'GET') return json(res, 200, stats);
  if (path === '/_test/stats' && req.method === 'DELETE') {
    stats = emptyStats();
    return json(res, 200, stats);
  }
  if (path === '/_test/revoke-grants' && req.method === 'POST') {
    const text = await readBody(req);
    const filter = text.trim() ? JSON.parse(text) : {};
    let revoked = 0;
    for (const [key, { payload }] of [...store]) {
      if (!key.startsWith('Grant:')) continue;
      if (filter.client_id !== undefined && payload.clientId !== filter.client_id) continue;
      if (filter.account_id !== undefined && payload.accountId !== filter.account_id) continue;
      revokeGrant(key.slice('Grant:'.length));
      revoked += 1;
    }
    return json(res, 200, { revoked });
  }
  return json(res, 404, { error: 'not_found' });
}

// --- Server. ---

const handleProvider = provider.callback();
const server = createServer(async (req, res) => {
  try {
    const path = new URL(req.url, issuer).pathname;
    const match = path.match(/^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/);
    if (match) return await interaction(req, res, decodeURIComponent(match[1]), match[2]);
    if (path.startsWith('/_test/')) return await testEndpoint(req, res, path);
    return handleProvider(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) page(res, 500, 'Error', `<pre>${escapeHtml(err.message ?? err)}</pre>`);
    else res.end();
  }
});

provider.on('server_error', (_ctx, err) => console.error('server_error', err));
provider.on('grant.error', (_ctx, err) => console.error('grant.error', err.message, err.error_description ?? ''));

server.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
