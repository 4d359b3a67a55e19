// The official OpenAI Node SDK against imageserve: a streamed generation, a streamed edit and a variation.
// Usage: node images.mjs <base url> <api key> <model>; prints one JSON summary on stdout.
import OpenAI, { toFile } from "openai";
import { readFileSync } from "node:fs";

const [baseURL, apiKey, model, imagePath] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const summary = {};

const generated = await client.images.generate({ model, prompt: "a red fox", size: "256x256", stream: true,
                                                 partial_images: 2 });
summary.generate = [];
for await (const event of generated) {
  summary.generate.push({ type: event.type, index: event.partial_image_index ?? null,
                          bytes: Buffer.from(event.b64_json, "base64").length, size: event.size,
                          perf: event.perf ?? null });
}

const image = await toFile(readFileSync(imagePath), "input.png", { type: "image/png" });
const edited = await client.images.edit({ model, image, prompt: "a red hat", stream: true, partial_images: 1 });
summary.edit = [];
for await (const event of edited) summary.edit.push({ type: event.type, size: event.size });

const again = await toFile(readFileSync(imagePath), "input.png", { type: "image/png" });
const varied = await client.images.createVariation({ model, image: again, n: 2, response_format: "b64_json" });
summary.variation = { count: varied.data.length, perf: varied.perf ?? null };

try {
  await client.images.generate({ model, prompt: "a fox", size: "256x256", stream: true, partial_images: 7 });
  summary.badRequest = null;
} catch (error) {
  summary.badRequest = { status: error.status, param: error.param ?? error.error?.param ?? null };
}
console.log(JSON.stringify(summary));
