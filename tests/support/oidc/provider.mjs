// A real OpenID Provider for the identity tests: the certified `oidc-provider` package,
// configured from a JSON file written by tests/support/oidc_provider.py (argv[2]):
//   { "port": 0-65535, "issuer": "http://127.0.0.1:PORT", "audience": "...",
//     "jwks": { "keys": [private signing keys] }, "clients": [client metadata],
//     "access_token_ttl_s": 300 }
// Access tokens for the audience are JWTs (RFC 9068, resource indicators), signed with
// the keys given. Sign-in is the package's own development login and consent pages
// (any login name is accepted: a test stand-in for the hospital's directory).
// Prints "READY <issuer>" on stdout when listening.
import fs from "node:fs";
import Provider from "oidc-provider";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const RESOURCE_SCOPES = "predict explain model:read metrics:read";

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  scopes: ["openid", "profile", "offline_access", ...RESOURCE_SCOPES.split(" ")],
  claims: { openid: ["sub"], profile: ["name"] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, name: `Dr ${id}` }),
  }),
  pkce: { required: () => true },
  clientBasedCORS: () => true,
  ttl: {
    AccessToken: config.access_token_ttl_s,
    ClientCredentials: config.access_token_ttl_s,
    IdToken: 3600,
    RefreshToken: 86400,
    Interaction: 3600,
    Session: 86400,
    Grant: 86400,
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => config.audience,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => {
        if (resource !== config.audience) throw new Provider.errors.InvalidTarget();
        return {
          scope: RESOURCE_SCOPES,
          audience: config.audience,
          accessTokenTTL: config.access_token_ttl_s,
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "RS256" } },
        };
      },
    },
  },
  issueRefreshToken: async (ctx, client, code) =>
    client.grantTypeAllowed("refresh_token") && code.scopes.has("offline_access"),
});
provider.proxy = false;

const server = provider.listen(config.port, "127.0.0.1", () => {
  process.stdout.write(`READY ${config.issuer}\n`);
});
const stop = () => server.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
