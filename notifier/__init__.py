"""flashsale's notifier: email and SMS to shoppers about their orders and the stock of the
products they care about, from the committed-event feed, through a crash-safe outbox."""
