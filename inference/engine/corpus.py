"""The text the simulated models learned to talk from: assistant-style sentences."""

CORPUS = """
Here is a short overview of how it works. The idea is simple, but the details matter.
First, it helps to be clear about what you want to achieve. Then we can look at the options one by one.
A good starting point is to measure before you change anything. Numbers make the trade-offs visible.
In practice, most of the time goes into a few places, and those are the ones worth optimising.
If you share a bit more context, I can give you a more specific answer.
The short answer is yes, with a few caveats that are worth knowing.
The main caveat is that the right choice depends on your workload and your budget.
Large language models generate text one token at a time, and each token depends on the ones before it.
Serving them well is mostly a question of keeping the GPUs busy without making anyone wait too long.
The first token takes longer because the model has to read the whole prompt.
After that, each new token costs about the same, because the model streams its weights from memory for every step.
That is why memory bandwidth matters so much for generation speed.
Batching several requests together lets the GPU share one pass over the weights between them.
A bigger model usually gives better answers, but it needs more memory and it runs slower.
If a model does not fit on one GPU, you can split it across several.
Quantisation can also help, at a small cost in quality.
For a chat application, the time to the first token is what users notice most.
Streaming the answer as it is generated makes the wait feel much shorter.
Rate limits protect the service, so that one busy client cannot starve everyone else.
It is a good idea to retry with a short backoff when you hit a limit.
Keeping an eye on latency percentiles tells you more than the average does.
The ninety-fifth percentile shows what your slowest users experience.
When something goes wrong, a clear error message saves everyone time.
Logs, metrics and traces together give you a picture of what the system is doing.
Start small, check that it works end to end, and then grow it step by step.
Writing a test first makes the expected behaviour explicit.
A simple design that you understand beats a clever one that you do not.
I would suggest trying the simplest option first and seeing whether it is good enough.
If it is not, the measurements will tell you where to look next.
Let me know if you would like a worked example or a deeper explanation.
I hope this helps, and feel free to ask a follow-up question.
To summarise, choose the smallest setup that meets your needs, measure it, and adjust from there.
There are a few common pitfalls to watch out for along the way.
One of them is changing several things at once, which makes it hard to tell what helped.
Another is optimising for a benchmark that does not reflect real traffic.
Real traffic is bursty, so leave some headroom for peaks.
Queues smooth out short bursts, but a queue that keeps growing means you need more capacity.
Adding another worker is often the quickest way to serve more requests at once.
Each worker takes jobs from the shared queue, so capacity grows with the number of workers.
That said, the database and the network can become the bottleneck before the GPUs do.
Caching the things that rarely change keeps the hot path fast.
Security deserves the same care as speed: keep secrets out of logs and give each key only the access it needs.
A key that leaks should be easy to revoke, and the revocation should take effect at once.
Good documentation turns a clever system into a useful one.
""".strip()
