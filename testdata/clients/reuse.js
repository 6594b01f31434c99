// Fetch TARGET N times through PROXY with undici's ProxyAgent, sharing one
// agent (shared) or a new agent per request (fresh), and print each body:
// the source address the target saw. Used by cmd/rotor's TestClientsReuse.
//
//   node reuse.js shared|fresh PROXY TARGET N
const { ProxyAgent, request } = require('undici');

async function main() {
  const [mode, proxy, target, n] = process.argv.slice(2);
  const opts = { uri: proxy, requestTls: { rejectUnauthorized: false } };
  let agent = new ProxyAgent(opts);
  for (let i = 0; i < Number(n); i++) {
    if (mode === 'fresh' && i > 0) {
      await agent.close();
      agent = new ProxyAgent(opts);
    }
    const { body } = await request(target, { dispatcher: agent });
    console.log((await body.text()).trim());
  }
  await agent.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
