// A small OpenID Connect provider for the portal's single sign-on tests, built on the
// certified `oidc-provider` package. Configured by environment variables:
//   PORT           port to listen on (127.0.0.1 only); the issuer is http://127.0.0.1:PORT
//   CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, POST_LOGOUT_REDIRECT_URI   the one static client
//   ACCOUNTS_FILE  JSON {"username": {"password", "email", "email_verified", "name", "groups"}},
//                  read at every use, so a test changes someone's groups by rewriting it.
// It prints "listening <issuer>" once ready. The sign-in page is a plain form
// (username, password); consent is implied for the test client.
import fs from 'node:fs';
import http from 'node:http';
import { URL } from 'node:url';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const accountsFile = process.env.ACCOUNTS_FILE;

function accounts() {
  return JSON.parse(fs.readFileSync(accountsFile, 'utf8'));
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const page = (title, body) => `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body><main><h1>${escape(title)}</h1>${body}</main></body></html>`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: [process.env.REDIRECT_URI],
    post_logout_redirect_uris: [process.env.POST_LOGOUT_REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  cookies: { keys: ['portal-test-oidc-provider-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = page('Sign out of the test provider?', `${form}<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>`);
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = page('Signed out of the test provider', '');
      },
    },
  },
  pkce: { required: () => true },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    if (!accounts()[id]) return undefined;
    return {
      accountId: id,
      async claims() {
        const a = accounts()[id] || {};
        return {
          sub: id,
          email: a.email,
          email_verified: a.email_verified,
          name: a.name,
          preferred_username: id,
          groups: a.groups || [],
        };
      },
    };
  },
  // The test client is first-party: consent to what it asks is implied.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
});

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; if (body.length > 10000) req.destroy(); });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name !== 'login') {
    // Consent is implied (loadExistingGrant); nothing else is asked.
    return provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
  }
  let error = '';
  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const user = accounts()[form.get('username')];
    if (user && user.password === form.get('password')) {
      return provider.interactionFinished(req, res, { login: { accountId: form.get('username') } }, { mergeWithLastSubmission: false });
    }
    error = '<p role="alert">Wrong username or password.</p>';
  }
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.end(page('Test provider sign-in', `${error}<form method="post" action="/interaction/${escape(uid)}/login">
<label for="u">Provider username</label> <input id="u" name="username" autocomplete="off">
<label for="p">Provider password</label> <input id="p" name="password" type="password">
<button type="submit">Continue</button></form>`));
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  const match = pathname.match(/^\/interaction\/([^/]+)(?:\/(login))?$/);
  if (!match) return callback(req, res);
  try {
    await interaction(req, res, match[1], match[2]);
  } catch (err) {
    res.statusCode = 400;
    res.end(page('Sign-in failed', `<p>${escape(err.message)}</p>`));
  }
});
server.listen(port, '127.0.0.1', () => console.log(`listening ${issuer}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
