// The official OpenAI Node SDK against fusion-host (issue 9): what a team
// that points its existing OpenAI code at the gateway meets. Run by
// tests/integration/test_openai_sdk.sh; prints one "ok - " or "NOT OK - "
// line per check.
import OpenAI from 'openai';
const client = new OpenAI({ baseURL: process.argv[2] + '/v1', apiKey: 'sk-anything', maxRetries: 0 });
const out = [];
const ok = (name, cond, extra='') => out.push(`${cond ? 'ok' : 'NOT OK'} - ${name}${extra ? ' ' + extra : ''}`);
// 1. a plain completion, overlaid, with the request id
{
  const { data, response } = await client.chat.completions.create({
    model: 'm', messages: [{ role: 'user', content: 'Order 4411 was refunded twice.' }],
    fusion: { scenario_type: 'refund_processing_duplicate', confidence: 0.9 } }).withResponse();
  ok('chat completion', data.choices[0].message.content.length > 0);
  ok('x-request-id reaches the SDK', (response.headers.get('x-request-id') || '').startsWith('req_stub_'), response.headers.get('x-request-id'));
  ok('fusion object and headers', data.fusion?.overlay === 'refund_lot_switch' && response.headers.get('x-fusion-reason') === 'applied');
}
// 2. a stream, with stream_options: null as some code sends it
{
  const stream = await client.chat.completions.create({ model: 'm', stream: true, stream_options: null,
    messages: [{ role: 'user', content: 'hi' }] });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  ok('stream with stream_options: null', text.length > 0, JSON.stringify(text.slice(0, 30)));
}
// 3. a stream cut by the upstream after it began: the SDK raises its API error
try {
  const stream = await client.chat.completions.create({ model: 'm', stream: true,
    messages: [{ role: 'user', content: 'hi' }], stub: { break_after_chunks: 2 } });
  for await (const chunk of stream) {}
  ok('cut stream raises', false, 'no error');
} catch (e) {
  ok('a cut stream raises the SDK API error', e instanceof OpenAI.APIError, `${e.constructor.name}: ${e.message}`);
}
// 4. a 429 with Retry-After
try {
  await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stub: { status: 429 } });
  ok('429', false);
} catch (e) {
  ok('a 429 is a RateLimitError with retry-after 7', e instanceof OpenAI.RateLimitError && e.headers?.['retry-after'] === '7', `${e.constructor.name} ${e.status} retry-after=${e.headers?.['retry-after']}`);
}
// 5. an error the gateway makes itself: every field of the error object
try {
  await client.post('/chat/completions', { body: 'not json', headers: { 'Content-Type': 'application/json' } });
} catch (e) {
  ok('a gateway 400 is a BadRequestError with code and param', e instanceof OpenAI.BadRequestError && e.code === 'invalid_body' && e.param === null, `${e.constructor.name} code=${e.code} param=${e.param}`);
}
// 6. other endpoints through the same base URL
{
  const models = await client.models.list();
  ok('models.list', models.data.length > 0);
  const emb = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'hello' });
  ok('embeddings.create is relayed (the stub echoes it)', emb.path === '/v1/embeddings', JSON.stringify(emb).slice(0, 80));
}
console.log(out.join('\n'));
process.exit(out.some((l) => l.startsWith('NOT OK')) ? 1 : 0);
