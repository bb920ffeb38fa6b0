print("ringback")
