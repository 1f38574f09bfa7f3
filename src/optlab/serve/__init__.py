"""The live page (`optlab serve`): studies, a study, a run and SQL in the browser, updating
while studies run. It reads the store as the other readers do and draws with the charts'
and analyses' own tables; nothing below it imports it."""
