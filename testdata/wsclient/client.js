// A real WebSocket client through rotor: ws with http-proxy-agent, which
// sends the upgrade as an absolute-form GET (GET http://host/path with
// Upgrade: websocket), as Node applications do. Usage:
//   node client.js ws://ORIGIN/path http://user:pass@PROXY MESSAGE...
// Prints each echoed message on its own line, then "closed".
const WebSocket = require('ws');
const { HttpProxyAgent } = require('http-proxy-agent');

const [url, proxy, ...messages] = process.argv.slice(2);
const ws = new WebSocket(url, { agent: new HttpProxyAgent(proxy) });
const timer = setTimeout(() => { console.error('timeout'); process.exit(2); }, 10000);
let got = 0;
ws.on('open', () => { for (const m of messages) ws.send(m); });
ws.on('message', (data) => {
  console.log(data.toString());
  if (++got === messages.length) ws.close();
});
ws.on('close', () => { clearTimeout(timer); console.log('closed'); });
ws.on('error', (err) => { console.error('error: ' + err.message); process.exit(1); });
