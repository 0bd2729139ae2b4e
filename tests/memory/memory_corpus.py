"""A fixed, mixed corpus for token-count tests: prose, chat, code, JSON, numbers, URLs and
several scripts. Kept in the repository so the counts never depend on the network."""

CORPUS: tuple[str, ...] = (
    "hello world",
    "Hi! Can you help me book a table for two at 7pm tomorrow?",
    "Sure - I found three Italian restaurants near you that have a free table at 19:00.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "Conversation state is kept per session key; history is appended row by row so that the "
    "cost of one message does not grow with the length of the conversation.",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n"
    "    return fib(n - 1) + fib(n - 2)\n",
    "for (let i = 0; i < items.length; i++) {\n  console.log(`item ${i}: ${items[i].name}`);\n}",
    '{"name": "get_weather", "arguments": {"city": "Berlin", "unit": "celsius", "days": 3}}',
    '[{"id": "call_8f2a", "type": "function", "function": {"name": "search", '
    '"arguments": "{\\"query\\": \\"flights to Lisbon\\"}"}}]',
    "Order #4815162342 shipped on 2024-03-17 at 14:05:09 UTC; total 1,299.95 EUR (VAT 19%).",
    "See https://example.com/docs/api/v2/sessions?limit=50&cursor=abc123#history for details.",
    "Grüß Gott! Können Sie mir sagen, wie spät es ist? Die Straßenbahn fährt um halb acht.",
    "Où est la bibliothèque ? Je voudrais emprunter « Les Misérables » de Victor Hugo.",
    "Привет! Как дела? Я хотел бы забронировать номер в гостинице на две ночи.",
    "你好，我想预订明天晚上七点两个人的位子。请问还有空位吗？",
    "こんにちは。明日の天気はどうですか？東京は雨が降るかもしれません。",
    "안녕하세요. 오늘 회의는 오후 세 시에 시작합니다.",
    "Great job 🎉🎉 see you tomorrow 👋 — thanks!!!",
    "ERROR 2024-05-01T12:00:00Z worker-3 TimeoutError: upstream did not answer within 30s "
    "(retry 2/5)",
    "SELECT id, key, last_activity FROM sessions WHERE status = 'active' ORDER BY "
    "last_activity DESC LIMIT 100;",
    "   indented text\n\n\n\twith tabs and    many   spaces   ",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "I'm sure you'll love it; they've said it's what we'd all hoped for.",
    "- item one\n- item two\n  - nested item\n1. first\n2. second\n",
    "The summary so far: the user asked about refunds, the assistant looked up order 1234 and "
    "explained that the refund takes 5-7 business days.",
)
