// Local OpenID provider for oidc-filter demos and end-to-end tests.
//
// Wraps the OpenID-certified `oidc-provider` package:
//   - issuer http://127.0.0.1:PORT (plain HTTP, loopback only)
//   - one confidential demo client (client_secret_basic, code flow, PKCE S256 required)
//   - demo users with email / email_verified / preferred_username claims, checked passwords
//   - a small login + consent form (same protocol as oidc-provider's devInteractions:
//     POST /interaction/<uid> prompt=login&login=..&password=.., then prompt=consent)
//   - an RS256 signing key generated at start; rotation (new key, old one dropped from the JWKS)
//     via POST http://127.0.0.1:ADMIN_PORT/rotate, or SIGUSR2.
//
// Settings (command line --name=value or environment variable):
//   --port            OP_PORT            9000
//   --admin-port      OP_ADMIN_PORT      (off)   admin API: GET /healthz, GET /jwks, POST /rotate,
//                                                GET /stats (token grants by type), POST /revoke?sub=...,
//                                                POST /misbehave?mode=... (tests: bad token responses)
//   --issuer          OP_ISSUER          http://127.0.0.1:PORT
//   --client-id       OP_CLIENT_ID       demo-client
//   --client-secret   OP_CLIENT_SECRET   demo-client-secret-change-me
//   --redirect-uris   OP_REDIRECT_URIS   comma list; default: http://127.0.0.1:P/oauth2/callback and
//                                        http://localhost:P/oauth2/callback for each P in ENVOY_PORTS
//   --envoy-ports     ENVOY_PORTS        8080
//   --id-token-ttl    OP_ID_TOKEN_TTL    3600 (seconds)
//   --tls-cert        OP_TLS_CERT        (off) PEM certificate: serve HTTPS
//   --tls-key         OP_TLS_KEY         (off) its PEM private key
//   --quiet           OP_QUIET           no per-request log lines
//
// API clients: `api-client` / `api-client-secret` gets RS256 JWT access tokens (RFC 9068,
// typ at+jwt) from the client-credentials grant, for the resource urn:oidc-filter:api (its
// aud), with groups ["robots"]; `api-client-2` gets the same without groups; `api-client-ps`
// and `api-client-es` get them signed PS256 (a 3072-bit key) and ES256.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as querystring from 'node:querystring';

import Provider from 'oidc-provider';

// ---------------------------------------------------------------- settings
function setting(name, envName, dflt) {
  const flag = `--${name}`;
  for (let i = 2; i < process.argv.length; i += 1) {
    const arg = process.argv[i];
    if (arg === flag && i + 1 < process.argv.length) return process.argv[i + 1];
    if (arg.startsWith(`${flag}=`)) return arg.slice(flag.length + 1);
  }
  if (process.env[envName] !== undefined && process.env[envName] !== '') return process.env[envName];
  return dflt;
}

const PORT = Number(setting('port', 'OP_PORT', '9000'));
const ADMIN_PORT = Number(setting('admin-port', 'OP_ADMIN_PORT', '0'));
const ISSUER = setting('issuer', 'OP_ISSUER', `http://127.0.0.1:${PORT}`);
const CLIENT_ID = setting('client-id', 'OP_CLIENT_ID', 'demo-client');
const CLIENT_SECRET = setting('client-secret', 'OP_CLIENT_SECRET', 'demo-client-secret-change-me');
const ENVOY_PORTS = setting('envoy-ports', 'ENVOY_PORTS', '8080').split(',').map((s) => s.trim()).filter(Boolean);
const ID_TOKEN_TTL = Number(setting('id-token-ttl', 'OP_ID_TOKEN_TTL', '3600'));
// --tls-cert / --tls-key: serve HTTPS (the issuer URL then starts with https://).
const TLS_CERT = setting('tls-cert', 'OP_TLS_CERT', '');
const TLS_KEY = setting('tls-key', 'OP_TLS_KEY', '');
const QUIET = process.argv.includes('--quiet') || ['1', 'true'].includes(process.env.OP_QUIET || '');
const REDIRECT_URIS = (setting('redirect-uris', 'OP_REDIRECT_URIS', '')
  || ENVOY_PORTS.flatMap((p) => [
    `http://127.0.0.1:${p}/oauth2/callback`,
    `http://localhost:${p}/oauth2/callback`,
  ]).join(','))
  .split(',').map((s) => s.trim()).filter(Boolean);

function log(...args) {
  // eslint-disable-next-line no-console
  console.log('op:', ...args);
}

// ---------------------------------------------------------------- users
// Demo accounts. The password of every demo user is "password".
const USERS = [
  {
    sub: 'alice', email: 'alice@example.com', email_verified: true,
    preferred_username: 'alice', name: 'Alice Example', password: 'password',
    groups: ['admins', 'staff'], realm_access: { roles: ['grafana-admin', 'viewer'] },
  },
  {
    sub: 'bob', email: 'bob@example.com', email_verified: true,
    preferred_username: 'bob', name: 'Bob Example', password: 'password',
    groups: ['staff'], realm_access: { roles: ['viewer'] },
  },
  {
    // An account whose email is not verified (the filter should refuse it by default).
    sub: 'mallory', email: 'mallory@example.com', email_verified: false,
    preferred_username: 'mallory', name: 'Mallory Unverified', password: 'password',
  },
  {
    // An account in 200 groups: her ID token is about 7 KB (a session that keeps it spans
    // three cookies).
    sub: 'carol', email: 'carol@example.com', email_verified: true,
    preferred_username: 'carol', name: 'Carol Many-Groups', password: 'password',
    groups: Array.from({ length: 200 }, (_, i) => `team-${String(i).padStart(4, '0')}-engineering`),
  },
  {
    // An account outside example.com (for email_domains tests).
    sub: 'eve', email: 'eve@other.test', email_verified: true,
    preferred_username: 'eve', name: 'Eve Other', password: 'password',
  },
];

function userByLogin(login) {
  const l = String(login || '').trim().toLowerCase();
  return USERS.find((u) => u.email === l || u.preferred_username === l || u.sub === l);
}

function safeEqual(a, b) {
  const ha = crypto.createHash('sha256').update(String(a)).digest();
  const hb = crypto.createHash('sha256').update(String(b)).digest();
  return crypto.timingSafeEqual(ha, hb);
}

async function findAccount(ctx, id) {
  const user = USERS.find((u) => u.sub === id);
  if (!user) return undefined;
  return {
    accountId: user.sub,
    async claims() {
      return {
        sub: user.sub,
        email: user.email,
        email_verified: user.email_verified,
        preferred_username: user.preferred_username,
        name: user.name,
        groups: user.groups || [],
        realm_access: user.realm_access || { roles: [] },
      };
    },
  };
}

// ---------------------------------------------------------------- keys
// A new private key. Generated straight to PKCS#8 PEM and read back as a key of its own:
// Node 20 can deadlock when the KeyObject that generateKeyPairSync returns is exported as a
// JWK and a garbage collection during the export destroys the generation job, whose
// destructor locks the mutex of the very key the export holds (seen in CI: the OP hung in
// ExportJWK before it listened). The key read back shares no mutex with any job.
function generatePrivateKey(type, options) {
  const { privateKey } = crypto.generateKeyPairSync(type, {
    ...options,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return crypto.createPrivateKey(privateKey);
}

let keyGeneration = 0;
function newSigningKey() {
  keyGeneration += 1;
  const privateKey = generatePrivateKey('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  jwk.kid = `op-key-${keyGeneration}-${crypto.randomBytes(4).toString('hex')}`;
  jwk.use = 'sig';
  jwk.alg = 'RS256';
  return jwk;
}

// Keys that stay across rotations, for the API clients whose access tokens use another
// algorithm than RS256: a PS256 RSA key and an ES256 (P-256) key.
function staticKey(type, options, alg) {
  const privateKey = generatePrivateKey(type, options);
  const jwk = privateKey.export({ format: 'jwk' });
  jwk.kid = `op-${alg.toLowerCase()}-${crypto.randomBytes(4).toString('hex')}`;
  jwk.use = 'sig';
  jwk.alg = alg;
  return jwk;
}
const STATIC_KEYS = [
  staticKey('rsa', { modulusLength: 3072 }, 'PS256'),
  staticKey('ec', { namedCurve: 'P-256' }, 'ES256'),
];

function publicJwk(jwk) {
  return {
    kty: jwk.kty, kid: jwk.kid, use: jwk.use, alg: jwk.alg, n: jwk.n, e: jwk.e,
  };
}

// Clients of the client-credentials grant, and the API their access tokens are for.
const API_RESOURCE = 'urn:oidc-filter:api';
const API_CLIENTS = [
  { id: 'api-client', secret: 'api-client-secret', groups: ['robots'] },
  { id: 'api-client-2', secret: 'api-client-2-secret' },
  { id: 'api-client-ps', secret: 'api-client-ps-secret', alg: 'PS256' },
  { id: 'api-client-es', secret: 'api-client-es-secret', alg: 'ES256' },
];

// What the token endpoint did (GET /stats on the admin API), and each account's grants (for
// POST /revoke?sub=...).
const STATS = { grants: {}, grant_errors: {}, end_session: 0 };
const GRANTS = new Map();

// Cookie keys stay the same across rotations so interactions/sessions survive a key change.
const COOKIE_KEYS = [crypto.randomBytes(32).toString('base64url')];

// ---------------------------------------------------------------- provider
function buildProvider(signingJwk) {
  const provider = new Provider(ISSUER, {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      redirect_uris: REDIRECT_URIS,
      post_logout_redirect_uris: ENVOY_PORTS.flatMap((p) => [`http://127.0.0.1:${p}/`, `http://localhost:${p}/`]),
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    },
    ...API_CLIENTS.map((c) => ({
      client_id: c.id,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    }))],
    clientDefaults: {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    },
    pkce: {
      required: () => true,
    },
    // Refresh tokens for the demo client without offline_access, rotated on every use (a
    // used one presented again revokes the whole grant, as oidc-provider does).
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    findAccount,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      // groups as most providers send them, realm_access.roles as Keycloak nests its roles.
      profile: ['preferred_username', 'name', 'groups', 'realm_access'],
    },
    scopes: ['openid', 'email', 'profile', 'offline_access'],
    // Put the scope-requested claims (email, preferred_username) in the ID token itself.
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      // RP-initiated logout stays available for curious users.
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          ctx.body = page('Sign out', `<h1>Sign out of the provider?</h1>${form}
<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout" id="logout">Yes, sign me out</button>`);
        },
      },
      clientCredentials: { enabled: true },
      // JWT access tokens for one API (RFC 8707 resource, RFC 9068 format).
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => oneOf
          || (API_CLIENTS.some((a) => a.id === client.clientId) ? API_RESOURCE : undefined),
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource, client) => ({
          scope: 'api:read',
          audience: API_RESOURCE,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: API_CLIENTS.find((a) => a.id === client.clientId)?.alg || 'RS256' } },
        }),
      },
    },
    extraTokenClaims: async (ctx, token) => {
      const c = API_CLIENTS.find((a) => a.id === token.clientId);
      return c && c.groups ? { groups: c.groups } : undefined;
    },
    interactions: {
      url(ctx, interaction) {
        return `/interaction/${interaction.uid}`;
      },
    },
    jwks: { keys: [signingJwk, ...STATIC_KEYS] },
    cookies: { keys: COOKIE_KEYS },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 120,
      IdToken: ID_TOKEN_TTL,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
      ClientCredentials: 300,
      RefreshToken: 3600,
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<h1>OpenID provider error</h1><pre>${escapeHtml(JSON.stringify(out, null, 2))}</pre>`);
    },
  });
  provider.on('server_error', (ctx, err) => log('server_error', err && err.message));
  provider.on('grant.success', (ctx) => {
    const type = ctx.oidc.params.grant_type;
    STATS.grants[type] = (STATS.grants[type] || 0) + 1;
    const grant = ctx.oidc.entities.Grant;
    if (grant && grant.accountId) {
      if (!GRANTS.has(grant.accountId)) GRANTS.set(grant.accountId, new Set());
      GRANTS.get(grant.accountId).add(grant.jti);
    }
  });
  provider.on('grant.error', (ctx) => {
    const type = (ctx.oidc && ctx.oidc.params && ctx.oidc.params.grant_type) || 'unknown';
    STATS.grant_errors[type] = (STATS.grant_errors[type] || 0) + 1;
  });
  provider.on('end_session.success', () => { STATS.end_session += 1; });
  return provider;
}

let currentJwk = newSigningKey();
let provider = buildProvider(currentJwk);
let providerCallback = provider.callback();

function rotateKey() {
  const old = currentJwk.kid;
  currentJwk = newSigningKey();
  provider = buildProvider(currentJwk);
  providerCallback = provider.callback();
  log(`rotated signing key ${old} -> ${currentJwk.kid}`);
  return { old_kid: old, kid: currentJwk.kid };
}

// ---------------------------------------------------------------- interactions (login/consent)
function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>
body{font-family:sans-serif;max-width:28em;margin:3em auto;color:#222}
input,button{display:block;width:100%;margin:.4em 0;padding:.5em;font-size:1em;box-sizing:border-box}
.hint{color:#666;font-size:.9em}.err{color:#b00}
</style></head><body>${body}</body></html>`;
}

function sendHtml(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
  });
  res.end(html);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 64 * 1024) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(querystring.parse(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function loginForm(uid, params, error) {
  return page('Sign in', `
<h1>Sign in</h1>
<p class="hint">Demo OpenID provider. Client: <code>${escapeHtml(params.client_id)}</code></p>
${error ? `<p class="err" id="error">${escapeHtml(error)}</p>` : ''}
<form autocomplete="off" action="/interaction/${escapeHtml(uid)}" method="post" id="login-form">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" id="login" placeholder="email (alice@example.com)" autofocus value="${escapeHtml(params.login_hint || '')}">
  <input required type="password" name="password" id="password" placeholder="password">
  <button type="submit" id="submit">Sign in</button>
</form>
<p class="hint">Demo users: alice@example.com, bob@example.com (password: <code>password</code>).</p>`);
}

function consentForm(uid, details, params) {
  const scopes = (details.missingOIDCScope || []).filter((s) => s !== 'openid');
  return page('Authorize', `
<h1>Authorize</h1>
<p><code>${escapeHtml(params.client_id)}</code> asks for: ${escapeHtml(scopes.join(', ') || 'sign-in')}</p>
<form autocomplete="off" action="/interaction/${escapeHtml(uid)}" method="post" id="consent-form">
  <input type="hidden" name="prompt" value="consent"/>
  <button type="submit" id="submit">Continue</button>
</form>
<form action="/interaction/${escapeHtml(uid)}/abort" method="get"><button type="submit" id="abort">Cancel</button></form>`);
}

async function handleInteraction(req, res, uid, sub) {
  const p = provider;
  const details = await p.interactionDetails(req, res);
  if (details.uid !== uid) {
    sendHtml(res, 400, page('Error', '<p class="err">interaction mismatch</p>'));
    return;
  }
  const { prompt, params, session, grantId } = details;

  if (sub === 'abort') {
    await p.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (req.method === 'GET') {
    if (prompt.name === 'login') sendHtml(res, 200, loginForm(uid, params));
    else if (prompt.name === 'consent') sendHtml(res, 200, consentForm(uid, prompt.details, params));
    else sendHtml(res, 501, page('Error', 'prompt not implemented'));
    return;
  }
  if (req.method !== 'POST') {
    res.writeHead(405, { allow: 'GET, POST' });
    res.end();
    return;
  }

  const body = await readBody(req);
  if (body.prompt === 'login' && prompt.name === 'login') {
    const user = userByLogin(body.login);
    if (!user || !safeEqual(body.password || '', user.password)) {
      log('login failed');
      sendHtml(res, 200, loginForm(uid, params, 'Invalid email or password.'));
      return;
    }
    log(`login ok: ${user.sub}`);
    await p.interactionFinished(req, res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
    return;
  }
  if (body.prompt === 'consent' && prompt.name === 'consent') {
    let grant;
    if (grantId) {
      grant = await p.Grant.find(grantId);
    } else {
      grant = new p.Grant({ accountId: session.accountId, clientId: params.client_id });
    }
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scope] of Object.entries(d.missingResourceScopes)) {
        grant.addResourceScope(indicator, scope.join(' '));
      }
    }
    const newGrantId = await grant.save();
    const result = {};
    if (!grantId) result.consent = { grantId: newGrantId };
    await p.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
    return;
  }
  sendHtml(res, 400, page('Error', `<p class="err">unexpected prompt (expected ${escapeHtml(prompt.name)})</p>`));
}

// ---------------------------------------------------------------- misbehaviour (tests only)
// The admin API can make the token endpoint answer badly, to check that the relying party
// refuses what it must: POST /misbehave?mode=<mode> (persistent until POST /misbehave?mode=).
const MISBEHAVE_MODES = new Set([
  'wrong_aud', 'wrong_iss', 'wrong_nonce', 'no_nonce', 'expired', 'alg_none', 'bad_signature',
  'foreign_key', 'unknown_kid', 'hs256_client_secret', 'extra_aud', 'token_error', 'not_json',
  'no_id_token', 'unverified_email', 'resign',
]);
let misbehave = '';
const foreignKey = generatePrivateKey('rsa', { modulusLength: 2048 });

const b64json = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
const unb64json = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));

function signJwt(header, payload, mode) {
  const input = `${b64json(header)}.${b64json(payload)}`;
  if (header.alg === 'none') return `${input}.`;
  if (header.alg === 'HS256') {
    return `${input}.${crypto.createHmac('sha256', CLIENT_SECRET).update(input).digest('base64url')}`;
  }
  const key = mode === 'foreign_key' || mode === 'unknown_kid'
    ? foreignKey
    : crypto.createPrivateKey({ key: currentJwk, format: 'jwk' });
  return `${input}.${crypto.sign('sha256', Buffer.from(input), key).toString('base64url')}`;
}

function tamperIdToken(idToken, mode) {
  const [h, p, sig] = idToken.split('.');
  const header = unb64json(h);
  const payload = unb64json(p);
  const now = Math.floor(Date.now() / 1000);
  switch (mode) {
    case 'wrong_aud': payload.aud = 'another-client'; break;
    case 'extra_aud': payload.aud = [payload.aud, 'another-client']; break;
    case 'wrong_iss': payload.iss = 'http://127.0.0.1:1'; break;
    case 'wrong_nonce': payload.nonce = 'not-the-nonce-that-was-sent'; break;
    case 'no_nonce': delete payload.nonce; break;
    case 'expired': payload.iat = now - 7200; payload.exp = now - 3600; break;
    case 'unverified_email': payload.email_verified = false; break;
    case 'alg_none': header.alg = 'none'; break;
    case 'hs256_client_secret': header.alg = 'HS256'; break;
    case 'unknown_kid': header.kid = 'no-such-kid'; break;
    case 'foreign_key': break;
    case 'resign': break; // control: same claims, re-signed with the real key (must be accepted)
    case 'bad_signature': {
      const raw = Buffer.from(sig, 'base64url');
      raw[raw.length - 1] ^= 0x01;
      return `${h}.${p}.${raw.toString('base64url')}`;
    }
    default: return idToken;
  }
  return signJwt(header, payload, mode);
}

function misbehaveTokenResponse(res, mode) {
  const origEnd = res.end.bind(res);
  res.end = (chunk, ...rest) => {
    try {
      if (res.statusCode === 200 && chunk && !res.headersSent) {
        let out;
        if (mode === 'token_error') {
          res.statusCode = 400;
          out = JSON.stringify({ error: 'invalid_grant', error_description: 'misbehave: token_error' });
        } else if (mode === 'not_json') {
          out = '<html>not json</html>';
        } else {
          const body = JSON.parse(chunk.toString());
          if (mode === 'no_id_token') delete body.id_token;
          else body.id_token = tamperIdToken(body.id_token, mode);
          out = JSON.stringify(body);
        }
        const buf = Buffer.from(out);
        res.setHeader('content-length', buf.length);
        log(`misbehave: token response (${mode})`);
        return origEnd(buf);
      }
    } catch (err) {
      log('misbehave failed:', err && err.message);
    }
    return origEnd(chunk, ...rest);
  };
}

// ---------------------------------------------------------------- servers
const INTERACTION_RE = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(abort))?$/;

const serve = (handler) => (TLS_CERT
  ? https.createServer({ cert: fs.readFileSync(TLS_CERT), key: fs.readFileSync(TLS_KEY) }, handler)
  : http.createServer(handler));

const server = serve(async (req, res) => {
  const path = (req.url || '/').split('?')[0];
  if (!QUIET) log(req.method, path);
  const m = INTERACTION_RE.exec(path);
  if (m) {
    try {
      await handleInteraction(req, res, m[1], m[2]);
    } catch (err) {
      log('interaction error:', err && err.message);
      if (!res.headersSent) {
        sendHtml(res, 400, page('Error', `<p class="err">${escapeHtml(err && err.message)}</p><p>Start the login again.</p>`));
      } else {
        res.end();
      }
    }
    return;
  }
  if (misbehave && path === '/token' && req.method === 'POST') misbehaveTokenResponse(res, misbehave);
  providerCallback(req, res);
});

server.listen(PORT, '127.0.0.1', () => {
  log(`issuer ${ISSUER} listening on 127.0.0.1:${PORT}`);
  log(`client_id=${CLIENT_ID} redirect_uris=${REDIRECT_URIS.join(' ')}`);
  log(`signing key ${currentJwk.kid}`);
});

if (ADMIN_PORT) {
  const admin = http.createServer((req, res) => {
    const path = (req.url || '/').split('?')[0];
    const json = (status, obj) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(obj));
    };
    if (path === '/healthz') return json(200, { ok: true, kid: currentJwk.kid });
    if (path === '/jwks') return json(200, { keys: [publicJwk(currentJwk)] });
    if (path === '/rotate' && req.method === 'POST') return json(200, rotateKey());
    if (path === '/stats') return json(200, STATS);
    if (path === '/revoke' && req.method === 'POST') {
      // Ends every grant of an account, as an administrator revoking a user would: its
      // refresh tokens stop working (invalid_grant).
      const sub = new URL(req.url, 'http://x').searchParams.get('sub') || '';
      const ids = [...(GRANTS.get(sub) || [])];
      GRANTS.delete(sub);
      Promise.all(ids.map(async (id) => {
        const grant = await provider.Grant.find(id);
        if (grant) await grant.destroy();
        await provider.RefreshToken.adapter.revokeByGrantId(id);
        await provider.AccessToken.adapter.revokeByGrantId(id);
      })).then(() => {
        log(`revoked ${ids.length} grant(s) of ${sub}`);
        json(200, { revoked: ids.length });
      }, (err) => json(500, { error: String(err && err.message) }));
      return undefined;
    }
    if (path === '/misbehave' && req.method === 'POST') {
      const mode = new URL(req.url, 'http://x').searchParams.get('mode') || '';
      if (mode && !MISBEHAVE_MODES.has(mode)) return json(400, { error: 'unknown mode', modes: [...MISBEHAVE_MODES] });
      misbehave = mode;
      log(`misbehave mode: ${mode || '(off)'}`);
      return json(200, { mode });
    }
    return json(404, {
      error: 'not found',
      endpoints: ['GET /healthz', 'GET /jwks', 'GET /stats', 'POST /rotate', 'POST /revoke?sub=...',
        'POST /misbehave?mode=...'],
    });
  });
  admin.listen(ADMIN_PORT, '127.0.0.1', () => log(`admin API on 127.0.0.1:${ADMIN_PORT} (POST /rotate)`));
}

process.on('SIGUSR2', () => rotateKey());
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    log(`${sig}, exiting`);
    process.exit(0);
  });
}
